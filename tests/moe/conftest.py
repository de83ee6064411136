"""Tiny real transformers MoE models, one per supported family."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

_COMMON = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
_MLA = {  # DeepSeek's multi-head latent attention
    "num_key_value_heads": 4,
    "q_lora_rank": 16,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 8,
}
# DeepSeek-V3-style routing: sigmoid, selection bias, 2 of 4 expert groups, a route scale
_GROUPED = {
    "moe_intermediate_size": 16,
    "num_experts_per_tok": 3,
    "n_group": 4,
    "topk_group": 2,
    "routed_scaling_factor": 2.5,
}
_DSA = {"index_topk": 4, "index_head_dim": 8, "index_n_heads": 2}  # their sparse attention
_QWEN_SHARED = {
    "head_dim": 8,
    "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 24,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "layer_types": ["full_attention"] * 2,
}
_FIRST_DENSE = {"mlp_layer_types": ["dense", "sparse"]}

# family -> (transformers config class, its arguments beyond _COMMON)
_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen3_moe": (
        "Qwen3MoeConfig",
        {"head_dim": 8, "moe_intermediate_size": 16, "num_experts": 8, "num_experts_per_tok": 2},
    ),
    "olmoe": ("OlmoeConfig", {"num_experts": 8, "num_experts_per_tok": 3}),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        {
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 24,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "norm_topk_prob": False,
        },
    ),
    "mixtral": ("MixtralConfig", {"head_dim": 8, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "deepseek_v3": (
        "DeepseekV3Config",
        {
            **_MLA,
            **_GROUPED,
            "head_dim": 8,
            "n_routed_experts": 8,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
        },
    ),
    "deepseek_v32": (
        "DeepseekV32Config",
        {
            **_MLA,
            **_GROUPED,
            **_DSA,
            "head_dim": 8,
            "n_routed_experts": 8,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
        },
    ),
    "glm4_moe": (
        "Glm4MoeConfig",
        {
            **_GROUPED,
            "head_dim": 8,
            "n_routed_experts": 8,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
        },
    ),
    "glm4_moe_lite": (
        "Glm4MoeLiteConfig",
        {**_MLA, **_GROUPED, **_FIRST_DENSE, "n_routed_experts": 8, "n_shared_experts": 1},
    ),
    "glm_moe_dsa": (
        "GlmMoeDsaConfig",
        {
            **_MLA,
            **_GROUPED,
            **_DSA,
            "head_dim": 8,
            "n_routed_experts": 8,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
        },
    ),
    "kimi_linear": (
        "KimiLinearConfig",
        {
            **_MLA,
            **_GROUPED,
            **_FIRST_DENSE,
            "num_local_experts": 8,
            "n_shared_experts": 1,
            "layer_types": ["full_attention"] * 2,
            "pad_token_id": None,
            "bos_token_id": None,
            "eos_token_id": None,
        },
    ),
    "mimo_v2_flash": (
        "MiMoV2FlashConfig",
        {
            **_GROUPED,
            **_FIRST_DENSE,
            "head_dim": 8,
            "v_head_dim": 8,
            "n_routed_experts": 8,
            "layer_types": ["full_attention"] * 2,
        },
    ),
    "nemotron_h": (  # attention + MoE layers only (no Mamba); relu2 experts, latent projections
        "NemotronHConfig",
        {
            **_GROUPED,
            "head_dim": 8,
            "layers_block_type": ["attention", "moe"],
            "n_routed_experts": 8,
            "moe_shared_expert_intermediate_size": 24,
            "moe_latent_size": 24,
        },
    ),
    "minimax_m2": (
        "MiniMaxM2Config",
        {
            "head_dim": 8,
            "intermediate_size": 16,
            "num_local_experts": 8,
            "num_experts_per_tok": 3,
            "bos_token_id": None,
            "eos_token_id": None,
        },
    ),
    "hy_v3": (
        "HYV3Config",
        {
            **_FIRST_DENSE,
            "head_dim": 8,
            "moe_intermediate_size": 16,
            "num_experts": 8,
            "num_experts_per_tok": 3,
            "num_shared_experts": 1,
            "router_scaling_factor": 2.5,
        },
    ),
    "laguna": (
        "LagunaConfig",
        {
            "head_dim": 8,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 24,
            "num_experts": 8,
            "num_experts_per_tok": 3,
            "moe_routed_scaling_factor": 2.5,
        },
    ),
    "qwen3_next": ("Qwen3NextConfig", {**_QWEN_SHARED, "norm_topk_prob": False}),
    "gpt_oss": (  # router bias; clamped swiglu_oai experts with biases, [E, in, out], interleaved
        "GptOssConfig",
        {
            "head_dim": 8,
            "num_local_experts": 8,
            "num_experts_per_tok": 3,
            "swiglu_limit": 1.0,  # low enough that the clamps bite on the random weights
            "layer_types": ["sliding_attention", "full_attention"],
            "sliding_window": 4,
        },
    ),
    "qwen3_5_moe": ("Qwen3_5MoeTextConfig", _QWEN_SHARED),
    "deepseek_v4": (  # a hash-routed layer, then a biased top-k one; clamped SwiGLU
        "DeepseekV4Config",
        {
            "num_key_value_heads": 1,
            "head_dim": 16,
            "q_lora_rank": 16,
            "moe_intermediate_size": 16,
            "n_routed_experts": 8,
            "num_experts_per_tok": 3,
            "routed_scaling_factor": 2.5,
            "swiglu_limit": 1.0,  # low enough that the clamps bite on the random weights
            "layer_types": ["sliding_attention"] * 2,
            "mlp_layer_types": ["hash_moe", "moe"],
            "sliding_window": 4,
            "o_groups": 2,
            "o_lora_rank": 8,
            "hc_mult": 2,
            "hc_sinkhorn_iters": 3,
        },
    ),
    "ernie4_5_moe": (  # the selection bias in gate.moe_statics, [1, E]
        "Ernie4_5_MoeConfig",
        {
            "moe_intermediate_size": 16,
            "moe_num_experts": 8,
            "moe_k": 3,
            "moe_num_shared_experts": 2,
            "moe_layer_start_index": 1,
            "moe_layer_end_index": 1,
        },
    ),
    "mistral4": (  # DeepSeek-V3's group-limited routing over softmax scores, no bias
        "Mistral4Config",
        {
            **_MLA,
            **_GROUPED,
            "head_dim": 16,
            "n_routed_experts": 8,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
        },
    ),
    "minimax_m3": (  # clamped swiglu_oai experts; a shared MLP with a fused gate_up_proj
        "MiniMaxM3VLTextConfig",
        {
            "head_dim": 8,
            "intermediate_size": 16,
            "num_local_experts": 8,
            "num_experts_per_tok": 3,
            "dense_intermediate_size": 48,
            "shared_intermediate_size": 24,
            "routed_scaling_factor": 2.5,
            "swiglu_limit": 1.0,
            "rotary_dim": 4,
            "mlp_layer_types": ["dense", "sparse"],
            "index_n_heads": 2,
            "index_head_dim": 8,
            "index_block_size": 4,
            "index_topk_blocks": 2,
            "bos_token_id": None,
            "eos_token_id": None,
        },
    ),
}
# families whose causal LM is not in AutoModelForCausalLM's mapping
_MODEL_CLASSES = {"mistral4": "Mistral4ForCausalLM"}
FAMILIES = tuple(_CONFIGS)
# the MoE blocks of each family's tiny model (the others' first layer is a dense MLP)
_MOE_EVERY_LAYER = ("qwen3_moe", "olmoe", "qwen2_moe", "mixtral", "minimax_m2", "qwen3_next")
_MOE_EVERY_LAYER += ("qwen3_5_moe", "gpt_oss", "deepseek_v4")


def moe_blocks(family: str) -> list[str]:
    """The names of the MoE blocks in the tiny model of ``family``."""
    if family == "nemotron_h":
        return ["model.layers.1.mixer"]
    layers = (0, 1) if family in _MOE_EVERY_LAYER else (1,)
    return [f"model.layers.{i}.mlp" for i in layers]


def make_config(family: str) -> Any:
    """A tiny config of ``family`` using the eager (per-expert loop) experts implementation."""
    import transformers

    class_name, options = _CONFIGS[family]
    cfg = getattr(transformers, class_name)(**{**_COMMON, **options})
    cfg._experts_implementation = "eager"
    return cfg


def causal_lm(family: str, config: Any = None) -> Any:
    """The causal LM of ``family`` built from ``config`` (default: ``make_config(family)``)."""
    import transformers

    config = make_config(family) if config is None else config
    if family in _MODEL_CLASSES:
        return getattr(transformers, _MODEL_CLASSES[family])(config)
    return transformers.AutoModelForCausalLM.from_config(config)


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter and float buffer with small random values (HF inits experts empty),
    and a hash router's ``tid2eid`` with random distinct experts."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in [*module.named_parameters(), *module.named_buffers()]:
            if name.endswith("tid2eid"):  # a hash table: distinct random experts per token id
                experts = max(m.num_experts for m in module.modules() if hasattr(m, "tid2eid"))
                order = torch.rand(p.shape[0], experts, generator=gen).argsort(dim=-1)
                p.copy_(order[:, : p.shape[1]])
                continue
            if not p.is_floating_point() or "rotary" in name or "inv_freq" in name:
                continue
            scale = 1.0 if "layernorm" in name or name.endswith("norm.weight") else 0.2
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module


@pytest.fixture(name="hf_model")
def hf_model_fixture() -> Callable[[str], Any]:
    """``hf_model(family)``: a tiny randomly initialised causal LM in eval mode."""

    def make(family: str) -> Any:
        torch.manual_seed(0)
        model = causal_lm(family)
        return randomize_(model).eval()

    return make
