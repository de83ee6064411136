"""Swap the MoE blocks of Hugging Face models for ours (and back), keeping the HF weight names.

transformers is never imported: blocks are recognised by class name and read duck-typed.
Our block keeps the HF parameter names and shapes (``mlp.gate.weight``,
``mlp.experts.gate_up_proj`` ``[E, 2I, H]`` or, for experts without gate, ``mlp.experts.up_proj``
``[E, I, H]``, ``mlp.experts.down_proj`` ``[E, H, I]``; gpt-oss's ``mlp.router.weight``/``bias``
and its experts' ``[E, in, out]`` weights with their ``*_bias``; the shared expert's
``gate_proj``/``up_proj``/``down_proj``, the selection bias ``mlp.gate.e_score_correction_bias``
or, where the HF block keeps it itself, ``mlp.e_score_correction_bias``), so the weight mapping
in both directions is the identity and ``state_dict()`` / ``save_pretrained`` output loads in
plain transformers unchanged.
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

# HF expert activation class -> ours: gated experts (``gate_up_proj``), plain ones (``up_proj``)
_ACTIVATIONS = {
    "SiLUActivation": "swiglu",
    "SiLU": "swiglu",
    "GELUActivation": "geglu",
    "GELU": "geglu",
}
_PLAIN_ACTIVATIONS = {"ReLUSquaredActivation": "relu2"}


def _base(block: nn.Module) -> dict[str, Any]:
    gate, experts = block.gate, block.experts
    num_experts, hidden = gate.weight.shape
    gated = hasattr(experts, "gate_up_proj")
    table = _ACTIVATIONS if gated else _PLAIN_ACTIVATIONS
    act_name = type(experts.act_fn).__name__
    if act_name not in table:
        raise ValueError(
            f"{type(block).__name__}: {'gated' if gated else 'non-gated'} expert activation "
            f"{act_name} is not supported; supported: {sorted(table)}"
        )
    in_proj = experts.gate_up_proj if gated else experts.up_proj
    return {
        "hidden_size": int(hidden),
        "moe_intermediate_size": int(in_proj.shape[1] // (2 if gated else 1)),
        "n_routed_experts": int(num_experts),
        "experts_per_token": int(gate.top_k),
        "activation": table[act_name],
    }


def _shared(block: nn.Module, name: str = "shared_experts") -> dict[str, Any]:
    """The fields of the block's one shared MLP ``name`` (none when it has none)."""
    shared = getattr(block, name, None)
    if shared is None:
        return {}
    return {"n_shared_experts": 1, "shared_intermediate_size": int(shared.down_proj.in_features)}


def _qwen3(block: nn.Module) -> tuple[dict[str, Any], str]:
    return {**_base(block), "norm_topk_prob": bool(block.gate.norm_topk_prob)}, "shared_experts"


def _qwen2(block: nn.Module) -> tuple[dict[str, Any], str]:
    return _gated_shared_expert(block, bool(block.gate.norm_topk_prob))


def _qwen3_5(block: nn.Module) -> tuple[dict[str, Any], str]:
    return _gated_shared_expert(block, True)  # its router always renormalises


def _gated_shared_expert(block: nn.Module, norm_topk_prob: bool) -> tuple[dict[str, Any], str]:
    """Qwen2-MoE's layout: one `shared_expert`, its output scaled by a sigmoid gate."""
    fields = {**_base(block), "norm_topk_prob": norm_topk_prob, **_shared(block, "shared_expert")}
    return {**fields, "shared_expert_gate": True}, "shared_expert"


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
    return {**fields, **_shared(block)}, "shared_experts"


def _nemotron_h(block: nn.Module) -> tuple[dict[str, Any], str]:
    fields, shared_name = _deepseek_v3(block)
    if isinstance(block.fc1_latent_proj, nn.Linear):
        fields["latent_size"] = int(block.fc1_latent_proj.out_features)
    return fields, shared_name


def _sigmoid_renormalised(block: nn.Module, route_scale: float) -> dict[str, Any]:
    """Sigmoid scores, selection biased, top-k renormalised, times ``route_scale``."""
    return {
        **_base(block),
        "score_func": "sigmoid",
        "norm_topk_prob": True,
        "score_correction_bias": True,
        "route_scale": float(route_scale),
    }


def _minimax_m2(block: nn.Module) -> tuple[dict[str, Any], str]:
    fields = _sigmoid_renormalised(block, 1.0)
    fields["input_jitter"] = float(getattr(block, "jitter_noise", 0.0) or 0.0)
    return fields, "shared_experts"


def _hy_v3(block: nn.Module) -> tuple[dict[str, Any], str]:
    fields = _sigmoid_renormalised(block, block.gate.router_scaling_factor)
    return {**fields, **_shared(block)}, "shared_experts"


def _laguna(block: nn.Module) -> tuple[dict[str, Any], str]:
    softcap = float(block.gate.router_logit_softcapping or 0.0)
    if softcap > 0:
        raise ValueError(
            f"{type(block).__name__}: router logit softcapping "
            f"(moe_router_logit_softcapping={softcap}) is not supported; only 0"
        )
    fields = _sigmoid_renormalised(block, block.routed_scaling_factor)
    return {**fields, **_shared(block)}, "shared_experts"


def _gpt_oss(block: nn.Module) -> tuple[dict[str, Any], str]:
    """gpt-oss: a router with a bias, top-k of the logits softmaxed over the k (the same weights
    as a softmax over all experts renormalised over the top k), clamped swiglu_oai experts.

    The expert layout is read from the flags transformers sets on its experts (gpt-oss's where
    a version has none): ``[E, in, out]``, gate and up interleaved, with biases."""
    router, experts = block.router, block.experts
    num_experts, hidden = router.weight.shape
    transposed = bool(getattr(experts, "is_transposed", True))
    fields = {
        "hidden_size": int(hidden),
        "moe_intermediate_size": int(experts.down_proj.shape[1 if transposed else 2]),
        "n_routed_experts": int(num_experts),
        "experts_per_token": int(router.top_k),
        "norm_topk_prob": True,
        "router_bias": True,
        "activation": "swiglu_oai",
        "activation_alpha": float(experts.alpha),
        "activation_limit": float(experts.limit),
        "gate_up_interleaved": not getattr(experts, "is_concatenated", False),
        "expert_bias": bool(getattr(experts, "has_bias", True)),
        "transposed_experts": transposed,
    }
    return fields, "shared_experts"


# HF block class name -> reader of (MoEConfig fields, shared-expert attribute name).
SUPPORTED: dict[str, Callable[[nn.Module], tuple[dict[str, Any], str]]] = {
    "Qwen3MoeSparseMoeBlock": _qwen3,
    "OlmoeSparseMoeBlock": _qwen3,
    "Qwen2MoeSparseMoeBlock": _qwen2,
    "Qwen3NextSparseMoeBlock": _qwen2,
    "Qwen3_5MoeSparseMoeBlock": _qwen3_5,
    "MixtralSparseMoeBlock": _mixtral,
    # DeepSeek-V3's router and shared experts, unchanged
    "DeepseekV3MoE": _deepseek_v3,
    "DeepseekV32MoE": _deepseek_v3,
    "Glm4MoeMoE": _deepseek_v3,
    "Glm4MoeLiteMoE": _deepseek_v3,
    "GlmMoeDsaMoE": _deepseek_v3,
    "KimiLinearMoE": _deepseek_v3,
    "MiMoV2FlashMoE": _deepseek_v3,  # without shared experts
    "NemotronHMoE": _nemotron_h,  # relu2 experts without gate, optional latent projections
    "MiniMaxM2SparseMoeBlock": _minimax_m2,
    "HYV3MoE": _hy_v3,
    "LagunaSparseMoeBlock": _laguna,
    "GptOssMLP": _gpt_oss,
}
# HF blocks of a supported family that cannot be swapped as loaded: why, and what to do
_UNSWAPPABLE = {
    "Mxfp4GptOssMLP": "gpt-oss with MXFP4-quantized experts (packed uint8 blocks, not "
    "trainable); load the checkpoint dequantized: from_pretrained(..., "
    "quantization_config=Mxfp4Config(dequantize=True)), in the recipes model.dequantize: true",
}
# HF blocks whose router is not ``gate`` or that return more than the hidden states
_BLOCK_OPTIONS: dict[str, dict[str, Any]] = {
    "GptOssMLP": {"router_name": "router", "return_router_scores": True},
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
        if type(module).__name__ in _UNSWAPPABLE:
            raise ValueError(f"{name}: {_UNSWAPPABLE[type(module).__name__]}")
        if type(module).__name__ not in SUPPORTED:
            continue
        config, shared_name = moe_config_from_hf(module, **overrides)
        bias_on_block = "e_score_correction_bias" in dict(module.named_buffers(recurse=False))
        with torch.device("meta"):
            options = _BLOCK_OPTIONS.get(type(module).__name__, {})
            ours = MoE(config, shared_name, bias_on_block=bias_on_block, **options)
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
    bias = module.topk_router.e_score_correction_bias
    homes = {"gate.e_score_correction_bias", "e_score_correction_bias"}
    if not homes & hf_keys and bias is not None and bias.any():
        warnings.warn(
            f"{name}: the HF block has no e_score_correction_bias; the learned balancing bias "
            "is dropped and routing in plain transformers ignores it",
            stacklevel=3,
        )
