"""Constants the test modules share; importable as `_shared` (pyproject's pytest `pythonpath`
and the torchrun workers' PYTHONPATH both name this folder)."""

from __future__ import annotations

from pathlib import Path

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
