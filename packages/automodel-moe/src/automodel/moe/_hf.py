"""Swap the MoE blocks of Hugging Face models for ours (and back), keeping the HF weight names.

transformers is never imported: blocks are recognised by class name and read duck-typed.
Our block keeps the HF parameter names and shapes (``mlp.gate.weight``,
``mlp.experts.gate_up_proj`` ``[E, 2I, H]`` or, for experts without gate, ``mlp.experts.up_proj``
``[E, I, H]``, ``mlp.experts.down_proj`` ``[E, H, I]``; gpt-oss's ``mlp.router.weight``/``bias``
and its experts' ``[E, in, out]`` weights with their ``*_bias``; the shared expert's
``gate_proj``/``up_proj``/``down_proj`` or MiniMax-M3's fused ``gate_up_proj``, the selection
bias ``mlp.gate.e_score_correction_bias``, where the HF block keeps it itself
``mlp.e_score_correction_bias``, ERNIE-4.5's ``mlp.gate.moe_statics.e_score_correction_bias``
``[1, E]``; DeepSeek-V4's hash table ``mlp.gate.tid2eid``), so the weight mapping
in both directions is the identity and ``state_dict()`` / ``save_pretrained`` output loads in
plain transformers unchanged.
"""

from __future__ import annotations

import inspect
import re
import warnings
from typing import Any

import torch
from torch import nn

from automodel.moe._block import MoE
from automodel.moe._config import MoEConfig, check_fields
from automodel.moe._hf_families import BLOCK_OPTIONS, SUPPORTED, UNSWAPPABLE

# MoEConfig fields a caller may choose; everything else is read from the HF block.
OVERRIDABLE = ("balancing", "aux_loss_coeff", "bias_update_rate", "backend", "routing")

# where HF blocks keep the selection bias, besides the router's `e_score_correction_bias`
_BIAS_KEYS = {
    "block": "e_score_correction_bias",
    "statics": "gate.moe_statics.e_score_correction_bias",
    "router": "gate.e_score_correction_bias",
}


def moe_config_from_hf(block: nn.Module, **overrides: Any) -> tuple[MoEConfig, str]:
    """``(MoEConfig, shared-expert attribute name)`` equivalent to a supported HF MoE block."""
    name = type(block).__name__
    if name not in SUPPORTED:
        raise ValueError(f"{name} is not a supported MoE block; supported: {sorted(SUPPORTED)}")
    check_fields(overrides)
    fixed = sorted(set(overrides) - set(OVERRIDABLE))
    if fixed:
        raise ValueError(
            f"patch_hf_moe reads {fixed} from the HF model; only {list(OVERRIDABLE)} can be set"
        )
    fields, shared_name = SUPPORTED[name](block)
    routing = overrides.get("routing")
    if routing == "hash" and fields.get("routing") != "hash":
        raise ValueError(
            f"routing='hash' is read from the HF model (a block with a tid2eid table), and "
            f"{name} has none; use routing 'learned' (the model's own) or 'balanced'"
        )
    if routing == "learned":  # the model's own routing: top-k, or hash where its block hashes
        overrides = {k: v for k, v in overrides.items() if k != "routing"}
    return MoEConfig(**{**fields, **overrides}), shared_name


def _bias_home(block: nn.Module) -> str:
    """Where ``block`` keeps its selection bias (see ``MoE``'s ``bias_home``)."""
    if "e_score_correction_bias" in dict(block.named_buffers(recurse=False)):
        return "block"
    gate = getattr(block, "gate", None)
    if gate is not None and hasattr(gate, "moe_statics"):
        return "statics"
    return "router"


def _text_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        return config.get_text_config()
    return config


def _swap(parent: nn.Module, child_name: str, new: nn.Module, old: nn.Module) -> None:
    """Replace ``parent.child_name`` by ``new``, taking over ``old``'s tensors (no copy)."""
    state = old.state_dict()
    missing, unexpected = new.load_state_dict(state, strict=False, assign=True)
    allowed_missing = set(_BIAS_KEYS.values())
    if unexpected or set(missing) - allowed_missing:
        raise RuntimeError(
            f"weights of {type(old).__name__} do not map onto {type(new).__name__}: "
            f"missing {missing}, unexpected {unexpected}"
        )
    device = next(iter(state.values())).device
    for module in new.modules():  # buffers the HF block did not have start at zero
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                module.register_buffer(
                    name,
                    torch.zeros(buf.shape, dtype=torch.float32, device=device),
                    persistent=name not in module._non_persistent_buffers_set,
                )
    new.train(old.training)
    setattr(parent, child_name, new)


def patch_hf_moe(model: nn.Module, **overrides: Any) -> list[str]:
    """Replace every supported HF MoE block in ``model`` by ``MoE``; return their names.

    ``overrides`` set MoEConfig fields the HF model does not define: ``balancing``,
    ``aux_loss_coeff``, ``bias_update_rate``, ``backend``, ``routing`` (``"balanced"`` replaces
    every layer's routing; ``"learned"`` keeps the model's own, so DeepSeek-V4's hash layers
    stay hash-routed). Call it before creating the optimizer or sharding the model: the
    parameters are re-wrapped (same storage, new ``Parameter``s).
    """
    replaced = []
    hf_config = _text_config(model)
    for name, module in list(model.named_modules()):
        if type(module).__name__ in UNSWAPPABLE:
            raise ValueError(f"{name}: {UNSWAPPABLE[type(module).__name__]}")
        if type(module).__name__ not in SUPPORTED:
            continue
        config, shared_name = moe_config_from_hf(module, **overrides)
        with torch.device("meta"):
            options = BLOCK_OPTIONS.get(type(module).__name__, {})
            ours = MoE(config, shared_name, bias_home=_bias_home(module), **options)
        ours.hf_class = type(module)
        ours.hf_args = _init_args(type(module), name)
        own_config = getattr(module, "config", None)
        ours.hf_config = hf_config if own_config is None else own_config
        parent_name, _, child = name.rpartition(".")
        _swap(model.get_submodule(parent_name), child, ours, module)
        replaced.append(name)
    if not replaced:
        raise ValueError(
            f"no supported MoE block in {type(model).__name__}; supported: {sorted(SUPPORTED)}"
        )
    if getattr(hf_config, "output_router_logits", False):
        warnings.warn(
            "output_router_logits=True: transformers records router logits only from its own "
            "router classes, so after patch_hf_moe they are empty; use moe_aux_loss(model) "
            "with balancing='aux_loss' instead",
            stacklevel=2,
        )
    return replaced


def unpatch_hf_moe(model: nn.Module) -> list[str]:
    """Put the original HF MoE blocks back (sharing our tensors); return their names."""
    restored = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, MoE) or getattr(module, "hf_class", None) is None:
            continue
        args = getattr(module, "hf_args", ())
        if args is None:
            raise ValueError(
                f"{name}: {module.hf_class.__name__} is built per layer (layer_idx), and the "
                "name it was swapped under has no 'layers.<i>' to rebuild it with"
            )
        with torch.device("meta"):
            hf_block = module.hf_class(module.hf_config, *args)
        state = module.state_dict()
        hf_keys = set(hf_block.state_dict())
        _check_restorable(name, module, hf_keys)
        hf_block.load_state_dict({k: v for k, v in state.items() if k in hf_keys}, assign=True)
        hf_block.train(module.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, hf_block)
        restored.append(name)
    return restored


def _init_args(hf_class: type, name: str) -> tuple[Any, ...] | None:
    """The HF block's constructor arguments after its config: the layer index, for blocks built
    per layer (DeepSeek-V4: hash layers or not), read from the block's name ``...layers.<i>...``
    (None when the name has none: then the block cannot be rebuilt)."""
    if "layer_idx" not in inspect.signature(hf_class.__init__).parameters:
        return ()
    match = re.search(r"(?:^|\.)layers\.(\d+)(?:\.|$)", name)
    return None if match is None else (int(match.group(1)),)


def _check_restorable(name: str, module: MoE, hf_keys: set[str]) -> None:
    bias = module.topk_router.e_score_correction_bias
    homes = set(_BIAS_KEYS.values())
    if not homes & hf_keys and bias is not None and bias.any():
        warnings.warn(
            f"{name}: the HF block has no e_score_correction_bias; the learned balancing bias "
            "is dropped and routing in plain transformers ignores it",
            stacklevel=3,
        )
