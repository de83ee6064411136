"""How each supported Hugging Face MoE block maps onto ``MoEConfig``: one reader per family.

A reader takes the HF block (duck-typed; transformers is never imported) and returns the
``MoEConfig`` fields it implies and the attribute name of its shared MLP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

# HF expert activation class -> ours: gated experts (``gate_up_proj``), plain ones (``up_proj``)
_ACTIVATIONS = {
    "SiLUActivation": "swiglu",
    "SiLU": "swiglu",
    "GELUActivation": "geglu",
    "GELU": "geglu",
}
_PLAIN_ACTIVATIONS = {"ReLUSquaredActivation": "relu2"}


def _base(block: nn.Module, activation: str | None = None) -> dict[str, Any]:
    """Sizes from the gate and the experts; the activation from the experts' ``act_fn`` unless
    given."""
    gate, experts = block.gate, block.experts
    num_experts, hidden = gate.weight.shape
    gated = hasattr(experts, "gate_up_proj")
    if activation is None:
        table = _ACTIVATIONS if gated else _PLAIN_ACTIVATIONS
        act_name = type(experts.act_fn).__name__
        if act_name not in table:
            raise ValueError(
                f"{type(block).__name__}: {'gated' if gated else 'non-gated'} expert activation "
                f"{act_name} is not supported; supported: {sorted(table)}"
            )
        activation = table[act_name]
    in_proj = experts.gate_up_proj if gated else experts.up_proj
    return {
        "hidden_size": int(hidden),
        "moe_intermediate_size": int(in_proj.shape[1] // (2 if gated else 1)),
        "n_routed_experts": int(num_experts),
        "experts_per_token": int(gate.top_k),
        "activation": activation,
    }


def _shared(block: nn.Module, name: str = "shared_experts") -> dict[str, Any]:
    """The fields of the block's one shared MLP ``name`` (none when it has none)."""
    shared = getattr(block, name, None)
    if shared is None:
        return {}
    biased = [n for n, m in shared.named_children() if getattr(m, "bias", None) is not None]
    if biased:
        raise ValueError(
            f"{type(block).__name__}: the shared expert's {biased} have biases (the model's "
            "use_bias / mlp_bias), which automodel.moe's shared MLP does not have; train this "
            "model without patch_hf_moe (no moe: section)"
        )
    return {"n_shared_experts": 1, "shared_intermediate_size": int(shared.down_proj.in_features)}


def _qwen3(block: nn.Module) -> tuple[dict[str, Any], str]:
    return {**_base(block), "norm_topk_prob": bool(block.gate.norm_topk_prob)}, "shared_experts"


def _qwen3_vl(block: nn.Module) -> tuple[dict[str, Any], str]:
    return {**_base(block), "norm_topk_prob": True}, "shared_experts"  # always renormalises


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


def _deepseek_v4(block: nn.Module) -> tuple[dict[str, Any], str]:
    """DeepSeek-V4: sqrtsoftplus (or sigmoid) scores always renormalised, a route scale, clamped
    SwiGLU in the experts and the shared expert; its hash layers route by ``gate.tid2eid``, the
    others by the biased top-k."""
    gate = block.gate
    score_name = type(gate.score_fn).__name__
    score_funcs = {"SqrtSoftplusActivation": "sqrtsoftplus", "Sigmoid": "sigmoid"}
    if score_name not in score_funcs:
        raise ValueError(
            f"{type(block).__name__}: router scoring {score_name} is not supported; supported: "
            f"{sorted(score_funcs)} (the config's scoring_func sqrtsoftplus or sigmoid)"
        )
    fields = {
        **_base(block),
        "score_func": score_funcs[score_name],
        "norm_topk_prob": True,
        "route_scale": float(gate.routed_scaling_factor),
        "activation_limit": float(block.experts.limit),
        **_shared(block),
    }
    if block.is_hash:
        fields.update(routing="hash", hash_vocab_size=int(gate.tid2eid.shape[0]))
    else:
        fields["score_correction_bias"] = True
    return fields, "shared_experts"


def _ernie4_5(block: nn.Module) -> tuple[dict[str, Any], str]:
    """ERNIE-4.5 MoE: softmax, selection biased by ``gate.moe_statics``, top-k renormalised
    (theirs divides by max(sum, moe_norm_min); a softmax's top-k sum is at least k/E)."""
    fields = {**_base(block), "norm_topk_prob": True, "score_correction_bias": True}
    return {**fields, **_shared(block)}, "shared_experts"


def _mistral4(block: nn.Module) -> tuple[dict[str, Any], str]:
    """Mistral 4: DeepSeek-V3's group-limited routing over softmax scores, with no bias."""
    fields, shared_name = _deepseek_v3(block)
    return {**fields, "score_func": "softmax", "score_correction_bias": False}, shared_name


def _nemotron_h(block: nn.Module) -> tuple[dict[str, Any], str]:
    fields, shared_name = _deepseek_v3(block)
    if isinstance(block.fc1_latent_proj, nn.Linear):
        fields["latent_size"] = int(block.fc1_latent_proj.out_features)
    return fields, shared_name


def _sigmoid_renormalised(
    block: nn.Module, route_scale: float, activation: str | None = None
) -> dict[str, Any]:
    """Sigmoid scores, selection biased, top-k renormalised, times ``route_scale``."""
    return {
        **_base(block, activation),
        "score_func": "sigmoid",
        "norm_topk_prob": True,
        "score_correction_bias": True,
        "route_scale": float(route_scale),
    }


def _minimax_m2(block: nn.Module) -> tuple[dict[str, Any], str]:
    fields = _sigmoid_renormalised(block, 1.0)
    fields["input_jitter"] = float(getattr(block, "jitter_noise", 0.0) or 0.0)
    return fields, "shared_experts"


def _minimax_m3(block: nn.Module) -> tuple[dict[str, Any], str]:
    """MiniMax-M3: MiniMax-M2's router, the output scaled by ``routed_scaling_factor``, clamped
    swiglu_oai experts (gate and up not interleaved) and a shared MLP with a fused gate_up."""
    experts = block.experts
    fields = _sigmoid_renormalised(block, block.routed_scaling_factor, "swiglu_oai")
    fields.update(
        activation_alpha=float(experts.swiglu_alpha),
        activation_limit=float(experts.swiglu_limit),
        n_shared_experts=1,
        shared_intermediate_size=int(block.shared_experts.down_proj.in_features),
    )
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
    "Qwen3VLMoeTextSparseMoeBlock": _qwen3_vl,  # Qwen3-VL-MoE's language model
    "MixtralSparseMoeBlock": _mixtral,
    # DeepSeek-V3's router and shared experts, unchanged
    "DeepseekV3MoE": _deepseek_v3,
    "DeepseekV32MoE": _deepseek_v3,
    "DeepseekV4SparseMoeBlock": _deepseek_v4,  # hash-routed layers and biased top-k ones
    "Mistral4MoE": _mistral4,
    "Ernie4_5_MoeSparseMoeBlock": _ernie4_5,
    "Glm4MoeMoE": _deepseek_v3,
    "Glm4MoeLiteMoE": _deepseek_v3,
    "GlmMoeDsaMoE": _deepseek_v3,
    "KimiLinearMoE": _deepseek_v3,
    "MiMoV2FlashMoE": _deepseek_v3,  # without shared experts
    "NemotronHMoE": _nemotron_h,  # relu2 experts without gate, optional latent projections
    "MiniMaxM2SparseMoeBlock": _minimax_m2,
    "MiniMaxM3VLSparseMoeBlock": _minimax_m3,
    "HYV3MoE": _hy_v3,
    "LagunaSparseMoeBlock": _laguna,
    "GptOssMLP": _gpt_oss,
}
# HF blocks of a supported family that cannot be swapped as loaded: why, and what to do
UNSWAPPABLE = {
    "Mxfp4GptOssMLP": "gpt-oss with MXFP4-quantized experts (packed uint8 blocks, not "
    "trainable); load the checkpoint dequantized: from_pretrained(..., "
    "quantization_config=Mxfp4Config(dequantize=True)), in the recipes model.dequantize: true",
}
# HF blocks whose router is not ``gate`` or that return more than the hidden states
BLOCK_OPTIONS: dict[str, dict[str, Any]] = {
    "GptOssMLP": {"router_name": "router", "return_router_scores": True},
    "MiniMaxM3VLSparseMoeBlock": {"shared_fused": True},
}
