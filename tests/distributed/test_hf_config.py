"""Tensor-parallel checks read a heterogeneous (per-layer) transformers config layer by layer."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from automodel.distributed import token_mixers_outside_attention
from automodel.distributed._hf_config import layer_config, layer_configs
from automodel.distributed._tp import _check_heads


def _gemma4(per_layer: dict) -> AutoModelForCausalLM:
    config = AutoConfig.for_model(
        "gemma4_text",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        sliding_window=16,
        per_layer_config=per_layer,
        vocab_size=64,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=64,
        num_kv_shared_layers=0,
    )
    return AutoModelForCausalLM.from_config(config)


def test_per_layer_attributes_are_read_from_each_layer() -> None:
    model = _gemma4({2: {"head_dim": 16}})
    config = model.config
    assert config.is_heterogeneous
    with pytest.raises(RuntimeError, match="per-layer attribute"):
        config.head_dim  # noqa: B018 - what transformers refuses, and why we read per layer
    assert [c.head_dim for c in layer_configs(config)] == [8, 8, 16]
    assert layer_config(config, 2).head_dim == 16 and layer_config(config, 0).head_dim == 8
    _check_heads(model, 2)  # 4 heads and 2 kv heads on every layer split over 2 ranks


def test_a_layer_whose_heads_do_not_split_is_named() -> None:
    model = _gemma4({2: {"num_key_value_heads": 1}})
    _check_heads(model, 1)
    with pytest.raises(ValueError, match=r"num_key_value_heads=1 \(layer 2\).*size 2"):
        _check_heads(model, 2)


TINY = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY = {**TINY, "num_key_value_heads": 2, "intermediate_size": 64, "head_dim": 8}
QWEN3_NEXT = {
    "layer_types": ["linear_attention", "full_attention"],
    **{"linear_num_value_heads": 4, "linear_num_key_heads": 2},
    **{"linear_key_head_dim": 8, "linear_value_head_dim": 8},
    **{"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16},
    "shared_expert_intermediate_size": 16,
}


@pytest.mark.parametrize(
    ("model_type", "extra", "found"),
    [
        ("llama", {}, []),
        ("gemma3_text", {}, []),  # sliding windows: refused by the cp attention itself
        (
            "qwen3_next",
            QWEN3_NEXT,
            [
                "linear_attention layers (config.layer_types)",
                "Qwen3NextGatedDeltaNet (a causal convolution over the sequence)",
            ],
        ),
        (
            "lfm2",
            {"layer_types": ["conv", "full_attention"]},
            [
                "conv layers (config.layer_types)",
                "Lfm2ShortConv (a causal convolution over the sequence)",
            ],
        ),
        ("llama4_text", {}, ["chunked_attention layers (config.layer_types)"]),
    ],
)
def test_token_mixers_outside_attention_are_found(model_type, extra, found) -> None:
    """Context parallelism joins the sequence in attention only: linear attention, short
    convolutions and chunked attention would each see a fragment of it."""
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **TINY, **extra))
    assert token_mixers_outside_attention(model) == found


def test_context_parallel_refuses_a_hybrid_model_before_touching_it() -> None:
    from _shared import SFT

    from automodel.core.config import ConfigError, load_config
    from automodel.recipes._context_parallel import attend_across_ranks

    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("qwen3_next", **TINY, **QWEN3_NEXT)
    )
    cfg = load_config(SFT, ["--+distributed.cp_size=2"])
    # the check comes before the cp object (a process group's) is used
    with pytest.raises(
        ConfigError,
        match=r"distributed\.cp_size: Qwen3NextForCausalLM mixes tokens outside full attention: linear_attention layers .* set cp_size: 1",
    ):
        attend_across_ranks(model, object(), cfg)
    assert model.config._attn_implementation != "automodel_cp_allgather"


def test_validation_refuses_a_hybrid_model_under_context_parallelism_from_its_config(
    monkeypatch,
) -> None:
    """`automodel validate` (the recipe's check) reads the model's config, not its weights."""
    import json

    from _shared import SFT

    from automodel.core.config import ConfigError, load_config
    from automodel.recipes.llm.finetune import SECTIONS, check

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc-per-node 2 sets
    config = json.dumps({"model_type": "qwen3_next", **TINY, **QWEN3_NEXT})
    cfg = load_config(
        SFT, ["--+distributed.cp_size=2", f"--model.config={config}"], sections=SECTIONS
    )
    with pytest.raises(
        ConfigError,
        match=r"distributed\.cp_size: the model mixes tokens outside full attention: linear_attention layers",
    ):
        check(cfg)
    check(load_config(SFT, ["--+distributed.cp_size=2"], sections=SECTIONS))  # a Llama: fine
