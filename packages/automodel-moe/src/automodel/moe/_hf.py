"""Swap the MoE blocks of Hugging Face models for ours (and back), keeping the HF weight names.

transformers is never imported: blocks are recognised by class name and read duck-typed.
Our block keeps the HF parameter names and shapes (``mlp.gate.weight``,
``mlp.experts.gate_up_proj`` ``[E, 2I, H]``, ``mlp.experts.down_proj`` ``[E, H, I]``, the shared
expert's ``gate_proj``/``up_proj``/``down_proj``, DeepSeek's ``mlp.gate.e_score_correction_bias``),
so the weight mapping in both directions is the identity and ``state_dict()`` /
``save_pretrained`` output loads in plain transformers unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from automodel.moe._block import MoE
from automodel.moe._config import MoEConfig, check_fields

# MoEConfig fields a caller may choose; everything else is read from the HF block.
OVERRIDABLE = ("balancing", "aux_loss_coeff", "bias_update_rate", "backend", "routing")

_ACTIVATIONS = {
    "SiLUActivation": "swiglu",
    "SiLU": "swiglu",
    "GELUActivation": "geglu",
    "GELU": "geglu",
}


def _base(block: nn.Module) -> dict[str, Any]:
    gate, experts = block.gate, block.experts
    num_experts, hidden = gate.weight.shape
    act_name = type(experts.act_fn).__name__
    if act_name not in _ACTIVATIONS:
        raise ValueError(
            f"{type(block).__name__}: expert activation {act_name} is not supported; "
            f"supported: {sorted(_ACTIVATIONS)}"
        )
    return {
        "hidden_size": int(hidden),
        "moe_intermediate_size": int(experts.gate_up_proj.shape[1] // 2),
        "n_routed_experts": int(num_experts),
        "experts_per_token": int(gate.top_k),
        "activation": _ACTIVATIONS[act_name],
    }


def _qwen3(block: nn.Module) -> tuple[dict[str, Any], str]:
    return {**_base(block), "norm_topk_prob": bool(block.gate.norm_topk_prob)}, "shared_experts"


def _qwen2(block: nn.Module) -> tuple[dict[str, Any], str]:
    fields, _ = _qwen3(block)
    fields["n_shared_experts"] = 1
    fields["shared_intermediate_size"] = int(block.shared_expert.gate_proj.out_features)
    fields["shared_expert_gate"] = True
    return fields, "shared_expert"


def _mixtral(block: nn.Module) -> tuple[dict[str, Any], str]:
    fields = {**_base(block), "norm_topk_prob": True}
    fields["input_jitter"] = float(getattr(block, "jitter_noise", 0.0) or 0.0)
    return fields, "shared_experts"


def _deepseek_v3(block: nn.Module) -> tuple[dict[str, Any], str]:
    gate = block.gate
    fields = {
        **_base(block),
        "score_func": "sigmoid",
        "n_groups": int(gate.num_group),
        "topk_groups": int(gate.topk_group),
        "route_scale": float(gate.routed_scaling_factor),
        "norm_topk_prob": bool(gate.norm_topk_prob),
        "score_correction_bias": True,
    }
    shared = getattr(block, "shared_experts", None)
    if shared is not None:
        fields["n_shared_experts"] = 1
        fields["shared_intermediate_size"] = int(shared.gate_proj.out_features)
    return fields, "shared_experts"


# HF block class name -> reader of (MoEConfig fields, shared-expert attribute name).
SUPPORTED: dict[str, Callable[[nn.Module], tuple[dict[str, Any], str]]] = {
    "Qwen3MoeSparseMoeBlock": _qwen3,
    "OlmoeSparseMoeBlock": _qwen3,
    "Qwen2MoeSparseMoeBlock": _qwen2,
    "MixtralSparseMoeBlock": _mixtral,
    "DeepseekV3MoE": _deepseek_v3,
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
    return MoEConfig(**fields, **overrides), shared_name


def _text_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        return config.get_text_config()
    return config


def _swap(parent: nn.Module, child_name: str, new: nn.Module, old: nn.Module) -> None:
    """Replace ``parent.child_name`` by ``new``, taking over ``old``'s tensors (no copy)."""
    state = old.state_dict()
    missing, unexpected = new.load_state_dict(state, strict=False, assign=True)
    allowed_missing = {"gate.e_score_correction_bias", "e_score_correction_bias"}
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
    ``aux_loss_coeff``, ``bias_update_rate``, ``backend``, ``routing``. Call it before creating
    the optimizer or sharding the model: the parameters are re-wrapped (same storage, new
    ``Parameter``s).
    """
    replaced = []
    hf_config = _text_config(model)
    for name, module in list(model.named_modules()):
        if type(module).__name__ not in SUPPORTED:
            continue
        config, shared_name = moe_config_from_hf(module, **overrides)
        with torch.device("meta"):
            ours = MoE(config, shared_name=shared_name)
        ours.hf_class = type(module)
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
        with torch.device("meta"):
            hf_block = module.hf_class(module.hf_config)
        state = module.state_dict()
        hf_keys = set(hf_block.state_dict())
        _check_restorable(name, module, hf_keys)
        hf_block.load_state_dict({k: v for k, v in state.items() if k in hf_keys}, assign=True)
        hf_block.train(module.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, hf_block)
        restored.append(name)
    return restored


def _check_restorable(name: str, module: MoE, hf_keys: set[str]) -> None:
    bias = module.gate.e_score_correction_bias
    if "gate.e_score_correction_bias" not in hf_keys and bias is not None and bias.any():
        warnings.warn(
            f"{name}: the HF block has no e_score_correction_bias; the learned balancing bias "
            "is dropped and routing in plain transformers ignores it",
            stacklevel=3,
        )
