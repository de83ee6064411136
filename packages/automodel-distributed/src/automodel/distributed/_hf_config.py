"""Reading a Hugging Face model's config, layer by layer where the config is heterogeneous."""

from __future__ import annotations

from typing import Any

from torch import nn


def text_config(model: nn.Module) -> Any:
    """The config of the language model inside `model` (itself for a text-only model), or None."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return config


def layer_config(config: Any, index: int) -> Any:
    """Layer `index`'s config: transformers' `per_layer_config[index]` when the config has
    per-layer attributes (then reading them on the global config raises), else `config`."""
    if getattr(config, "is_heterogeneous", False):
        return config.per_layer_config[index]
    return config


def layer_configs(config: Any) -> list[Any]:
    """Each layer's config (`[config]` when the layer count is unknown)."""
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int):
        return [config]
    return [layer_config(config, i) for i in range(layers)]


# layer_types of layers that mix tokens only through the attention interface with full causal
# attention (sliding-window layers are refused by the context-parallel attention itself)
_GLOBAL_ATTENTION_TYPES = ("full_attention", "sliding_attention", "attention", "global_attention")


def layer_types_outside_attention(config: Any) -> list[str]:
    """The kinds of layers in `config.layer_types` (and its text config's) that mix tokens
    other than by full attention, as `"<kind> layers (config.layer_types)"`; read from the
    config alone (before any weights)."""
    found = []
    text = config.get_text_config() if hasattr(config, "get_text_config") else None
    for part in (config, text):
        for kind in getattr(part, "layer_types", None) or ():
            label = f"{kind} layers (config.layer_types)"
            if kind not in _GLOBAL_ATTENTION_TYPES and label not in found:
                found.append(label)
    return found


def token_mixers_outside_attention(model: nn.Module) -> list[str]:
    """What in `model` mixes tokens along the sequence other than its (full) attention: layer
    types of its config (``linear_attention``, ``mamba``, ``conv``, ``chunked_attention``...)
    and the modules holding a ``Conv1d`` (state-space and short-convolution mixers). Context
    parallelism splits the sequence over ranks and joins it again in attention only, so a
    model with any of these cannot be split that way."""
    found = layer_types_outside_attention(getattr(model, "config", None))  # and its text config
    for module in model.modules():
        if any(isinstance(child, nn.Conv1d) for child in module.children()):
            label = f"{type(module).__name__} (a causal convolution over the sequence)"
            if label not in found:
                found.append(label)
    return found
