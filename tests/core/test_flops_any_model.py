"""training_flops_per_token: torch's FLOP counter on real transformers models agrees with it."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from _shared import TINY_FAMILIES
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from automodel.core.training import dense_decoder_flops_per_token, training_flops_per_token

SEQ = 32
# Families of different shapes: Conv1D projections (GPT-2), learned positions and biases (OPT,
# BLOOM), tied embeddings, grouped experts (Mixtral, Qwen3-MoE), MLA with shared and routed
# experts (DeepSeek-V3); Gemma 4's heterogeneous config is tested on its own below.
FAMILIES: dict[str, dict[str, Any]] = {
    name: TINY_FAMILIES[name]
    for name in ("llama", "qwen2", "gpt2", "opt", "bloom", "mixtral", "qwen3_moe", "deepseek_v3")
}
FAMILIES["llama_tied"] = {**TINY_FAMILIES["llama"], "tie_word_embeddings": True}


def _gemma4(sliding_window: int) -> dict[str, Any]:
    """Five sliding layers of head_dim 8, then a global layer whose head_dim is 16."""
    return {
        **TINY_FAMILIES["gemma4_text"],
        "num_hidden_layers": 6,
        "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
        "sliding_window": sliding_window,
        "per_layer_config": {5: {"head_dim": 16}},
    }


def _model(family: str, **kw: Any) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(family.removesuffix("_tied"), **kw)
    torch.manual_seed(0)
    # eager attention and experts: plain matmuls that torch's FLOP counter sees
    return AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", experts_implementation="eager"
    )


def _counted(model: nn.Module) -> tuple[float, dict[str, float]]:
    """FLOPs per token of one forward + backward, as torch's counter sees them, and per op."""
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (2, SEQ), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    per_op = {str(k): v / ids.numel() for k, v in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() / ids.numel(), per_op


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_torch_flop_counter(family: str) -> None:
    model = _model(family, **FAMILIES[family])
    assert training_flops_per_token(model, SEQ) == _counted(model)[0]


def test_llama_style_equals_the_config_formula() -> None:
    for family in ("llama", "llama_tied", "qwen2"):
        model = _model(family, **FAMILIES[family])
        expected = dense_decoder_flops_per_token(model.config, SEQ)
        assert training_flops_per_token(model, SEQ) == expected, family


def test_heterogeneous_config_is_read_layer_by_layer() -> None:
    # window >= seq_len: every position is attended, as the eager kernel computes
    wide = _model("gemma4_text", **_gemma4(sliding_window=SEQ))
    assert wide.config.is_heterogeneous
    assert training_flops_per_token(wide, SEQ) == _counted(wide)[0]
    # a window of 16: sliding layers count 16 positions, the eager kernel still multiplies 32
    narrow = _model("gemma4_text", **_gemma4(sliding_window=16))
    masked_away = 3 * 5 * 2 * 4 * (SEQ - 16) * (8 + 8)  # 5 layers, 4 heads, d_qk = d_v = 8
    assert training_flops_per_token(narrow, SEQ) == _counted(narrow)[0] - masked_away


def test_state_space_model_counts_its_matmuls_and_convolution() -> None:
    model = _model("mamba", **TINY_FAMILIES["mamba"])
    _, per_op = _counted(model)
    # torch's counter misreads the depthwise convolution's backward; a backward is 2x forward
    matmuls = per_op["aten.mm"] + per_op["aten.bmm"] + 3 * per_op["aten.convolution"]
    ours = training_flops_per_token(model, SEQ)
    assert ours == pytest.approx(matmuls, rel=0.01)  # left out: the elementwise scan


def test_experts_without_a_top_k_give_none_with_a_warning(caplog) -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.experts = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))

    with caplog.at_level(logging.WARNING, logger="automodel.core.training"):
        assert training_flops_per_token(Block(), SEQ) is None
    assert "experts" in caplog.text and "top-k" in caplog.text
    block = Block()
    block.top_k = 1  # as HF routers and MoE blocks hold it
    assert training_flops_per_token(block, SEQ) == 3 * 2 * 8 * 8
