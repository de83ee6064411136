"""Tensor-parallel checks read a heterogeneous (per-layer) transformers config layer by layer."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

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
