"""Tiny real transformers MoE models, one per supported family."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

FAMILIES = ("qwen3_moe", "olmoe", "qwen2_moe", "mixtral", "deepseek_v3")

_COMMON = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def make_config(family: str) -> Any:
    """A tiny config of ``family`` using the eager (per-expert loop) experts implementation."""
    import transformers

    if family == "qwen3_moe":
        cfg = transformers.Qwen3MoeConfig(
            **_COMMON, head_dim=8, moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2
        )
    elif family == "olmoe":
        cfg = transformers.OlmoeConfig(**_COMMON, num_experts=8, num_experts_per_tok=3)
    elif family == "qwen2_moe":
        cfg = transformers.Qwen2MoeConfig(
            **_COMMON,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=24,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=False,
        )
    elif family == "mixtral":
        cfg = transformers.MixtralConfig(
            **_COMMON, head_dim=8, num_local_experts=4, num_experts_per_tok=2
        )
    else:
        cfg = transformers.DeepseekV3Config(
            **{**_COMMON, "num_key_value_heads": 4},
            moe_intermediate_size=16,
            n_routed_experts=8,
            num_experts_per_tok=3,
            n_group=4,
            topk_group=2,
            n_shared_experts=1,
            first_k_dense_replace=1,
            q_lora_rank=16,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=8,
            head_dim=8,
            routed_scaling_factor=2.5,
        )
    cfg._experts_implementation = "eager"
    return cfg


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter and float buffer with small random values (HF inits experts empty)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in [*module.named_parameters(), *module.named_buffers()]:
            if not p.is_floating_point() or "rotary" in name or "inv_freq" in name:
                continue
            scale = 1.0 if "layernorm" in name or name.endswith("norm.weight") else 0.2
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module


@pytest.fixture(name="hf_model")
def hf_model_fixture() -> Callable[[str], Any]:
    """``hf_model(family)``: a tiny randomly initialised causal LM in eval mode."""
    import transformers

    def make(family: str) -> Any:
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(make_config(family))
        return randomize_(model).eval()

    return make
