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
