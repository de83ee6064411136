"""Constants the test modules share; importable as `_shared` (pyproject's pytest `pythonpath`
and the torchrun workers' PYTHONPATH both name this folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# The sizes of the small Llama the unit tests share (the `tiny_llama_config` fixture builds it).
TINY_LLAMA = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}

# The example configs most tests start from.
SFT = REPO / "examples/llm_finetune/tiny_sft.yaml"
LORA = REPO / "examples/llm_finetune/tiny_lora.yaml"
MOE = REPO / "examples/llm_finetune/tiny_moe.yaml"
PRETRAIN = REPO / "examples/llm_pretrain/tiny_pretrain.yaml"

# The fields of a metrics row that measure wall time, which differs between identical runs.
TIMING = ("tps", "tps_per_gpu", "mfu", "mem", "time", "elapsed_s")

# Tiny configs of transformers families of different shapes (AutoConfig.for_model kwargs):
# Conv1D projections, learned positions and biases, sliding and heterogeneous attention, MLA,
# shared and routed experts, routers that subclass nn.Linear, hybrid and state-space layers.
_SMALL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 64,  # the example tokenizer's ids fit
    "max_position_embeddings": 128,
}
_MOE = {"num_experts_per_tok": 2}
TINY_FAMILIES: dict[str, dict[str, Any]] = {
    "llama": _SMALL,
    "qwen2": _SMALL,  # attention biases
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 64, "n_positions": 128},
    "opt": {
        "hidden_size": 32,
        "ffn_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 64,
        "word_embed_proj_dim": 32,
        "max_position_embeddings": 128,
    },
    "bloom": {"hidden_size": 32, "n_layer": 2, "n_head": 4, "vocab_size": 64},
    "gemma3_text": {**_SMALL, "head_dim": 8, "sliding_window": 16},
    "gemma4_text": {  # heterogeneous: the global layer has its own head_dim
        **_SMALL,
        "num_key_value_heads": 4,
        "num_hidden_layers": 3,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
        "sliding_window": 16,
        "head_dim": 8,
        "global_head_dim": 16,
        "per_layer_config": {2: {"head_dim": 16}},
        "hidden_size_per_layer_input": 8,
        "vocab_size_per_layer_input": 64,
        "num_kv_shared_layers": 0,
    },
    "deepseek_v3": {  # MLA, a dense first layer, shared and routed experts
        **_SMALL,
        **_MOE,
        "num_key_value_heads": 4,
        "moe_intermediate_size": 32,
        "n_routed_experts": 4,
        "n_group": 1,
        "topk_group": 1,
        "q_lora_rank": 16,
        "kv_lora_rank": 16,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8,
        "v_head_dim": 8,
        "first_k_dense_replace": 1,
        "rope_scaling": None,
    },
    "jamba": {  # hybrid: a Mamba layer and an attention layer with experts
        **_SMALL,
        "num_experts": 4,
        **_MOE,
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "mamba_d_state": 8,
        "mamba_d_conv": 4,
        "mamba_expand": 2,
        "mamba_dt_rank": 4,
        "use_mamba_kernels": False,
    },
    "mamba": {  # a state-space model: its fused-kernel projections are left without LoRA
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "vocab_size": 64,
        "state_size": 8,
        "expand": 2,
        "conv_kernel": 4,
        "time_step_rank": 4,
    },
    "mixtral": {**_SMALL, **_MOE, "num_local_experts": 4},
    "qwen3_moe": {**_SMALL, **_MOE, "moe_intermediate_size": 32, "num_experts": 4, "head_dim": 8},
    "phimoe": {**_SMALL, **_MOE, "num_local_experts": 4},  # its router subclasses nn.Linear
}
