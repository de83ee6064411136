"""Bad configurations, patterns and adapter folders fail early with messages that say what to fix."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from automodel.peft import (
    AdapterError,
    LoraConfig,
    LoraConfigError,
    LoraLinear,
    apply_lora,
    load_adapter,
    read_adapter_config,
    save_adapter,
)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(dim=0), r"dim \(the LoRA rank\) must be a positive integer, got 0"),
        (dict(dim=-4), r"dim \(the LoRA rank\) must be a positive integer, got -4"),
        (dict(dim=2.5), r"dim \(the LoRA rank\) must be a positive integer, got 2.5"),
        (dict(alpha=-16), r"alpha must be positive .*got -16"),
        (dict(alpha=0), r"alpha must be positive"),
        (dict(alpha=float("nan")), r"alpha must be positive"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
        (dict(dropout=-0.1), r"dropout must be in \[0, 1\), got -0.1"),
        (
            dict(dropout_position="middle"),
            r"dropout_position must be one of pre, post; got 'middle'",
        ),
        (dict(init_a="zeros"), r"init_a must be one of kaiming, gaussian"),
        (dict(quantize_base="int4"), r"quantize_base must be one of nf4; got 'int4'"),
        (dict(lora_dtype="int8"), r"lora_dtype='int8' is not an accepted dtype; valid values are"),
        (dict(use_triton=True, use_dora=True), r"use_triton and use_dora cannot be combined"),
        (
            dict(use_dora=True, dropout=0.1, dropout_position="post"),
            r"use_dora .*dropout_position 'pre' only",
        ),
        (
            dict(target_modules=["q_proj", ""]),
            r"target_modules must be a list of non-empty strings",
        ),
    ],
    ids=lambda v: "-".join(f"{k}={v[k]}" for k in v) if isinstance(v, dict) else "",
)
def test_bad_config_values(kwargs, message):
    with pytest.raises(LoraConfigError, match=message):
        LoraConfig(**{"target_modules": ["q_proj"], **kwargs})


def test_no_targets():
    with pytest.raises(
        LoraConfigError, match=r"selects no modules: set target_modules .* or match_all_linear"
    ):
        LoraConfig(dim=8)


def test_dead_pattern_lists_existing_modules(make_llama):
    model = make_llama()
    with pytest.raises(LoraConfigError) as err:
        apply_lora(model, LoraConfig(target_modules=["q_proj", "query_key_value"]))
    message = str(err.value)
    assert "'query_key_value' matches no nn.Linear module" in message
    for existing in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.gate_proj"):
        assert existing in message
    assert not any(isinstance(m, LoraLinear) for m in model.modules())  # nothing half-applied
    assert all(p.requires_grad for p in model.parameters())

    with pytest.raises(LoraConfigError, match=r"matches only non-linear modules .*embed_tokens"):
        apply_lora(model, LoraConfig(target_modules=["embed_tokens"]))
    with pytest.raises(
        LoraConfigError, match=r"exclude_modules pattern 'qproj' matches no nn.Linear"
    ):
        apply_lora(model, LoraConfig(match_all_linear=True, exclude_modules=["qproj"]))
    with pytest.raises(LoraConfigError, match=r"'re:q_proj\(' is not a valid regex"):
        apply_lora(model, LoraConfig(target_modules=["re:q_proj("]))


def test_everything_excluded(make_llama):
    with pytest.raises(LoraConfigError, match="selects no module after exclude_modules"):
        apply_lora(
            make_llama(), LoraConfig(target_modules=["q_proj"], exclude_modules=["self_attn.*"])
        )


def test_apply_twice(make_llama):
    model = apply_lora(make_llama(), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(LoraConfigError, match="already has LoRA on 2 module"):
        apply_lora(model, LoraConfig(target_modules=["v_proj"]))


def test_adapter_for_another_base_shape(make_llama, tmp_path):
    small = apply_lora(make_llama(), LoraConfig(dim=4, target_modules=["q_proj", "v_proj"]))
    save_adapter(small, tmp_path)
    bigger = make_llama(hidden_size=48)
    with pytest.raises(AdapterError) as err:
        load_adapter(bigger, tmp_path)
    message = str(err.value)
    assert "model.layers.0.self_attn.q_proj" in message
    assert "[4, 32]" in message and "[4, 48]" in message  # the saved and the needed lora_A shape
    assert "in_features=48" in message and "different base model" in message


def _write_config(folder, **changes):
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(peft_type="IA3"), r"peft_type 'IA3' is not supported"),
        (
            dict(modules_to_save=["lm_head"]),
            r"option modules_to_save=\['lm_head'\] is not supported",
        ),
        (dict(bias="all"), r"option bias='all' is not supported"),
        (dict(lora_bias=True), r"option lora_bias=True is not supported"),
        (dict(layers_to_transform=[0]), r"option layers_to_transform=\[0\] is not supported"),
        (dict(rank_pattern={"q_proj": 0}), r"rank_pattern\['q_proj'\] must be a positive integer"),
        (dict(alpha_pattern={"(q_proj": 4}), r"alpha_pattern key '\(q_proj' is not a valid regex"),
        (dict(kasa_config={"svd_rank": 4}), r"option kasa_config=.* is not supported"),
        (dict(arrow_config={"top_k": 2}), r"option arrow_config=.* is not supported"),
        (dict(monteclora_config={"n_samples": 2}), r"option monteclora_config=.* is not supported"),
        (dict(r=0), r"dim \(the LoRA rank\) must be a positive integer"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
def test_unsupported_adapter_config(make_llama, tmp_path, changes, message):
    save_adapter(apply_lora(make_llama(), LoraConfig(dim=2, target_modules=["q_proj"])), tmp_path)
    read_adapter_config(tmp_path)  # the folder as written is fine
    _write_config(tmp_path, **changes)
    with pytest.raises(AdapterError, match=message):
        read_adapter_config(tmp_path)
    model = make_llama()
    with pytest.raises(AdapterError, match=message):
        load_adapter(model, tmp_path)
    assert not any(isinstance(m, LoraLinear) for m in model.modules())


def test_missing_adapter_files(make_llama, tmp_path):
    with pytest.raises(AdapterError, match=r"adapter_config\.json not found"):
        load_adapter(make_llama(), tmp_path / "nowhere")
    save_adapter(apply_lora(make_llama(), LoraConfig(dim=2, target_modules=["q_proj"])), tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors not found$"):
        load_adapter(make_llama(), tmp_path)
    torch.save({}, tmp_path / "adapter_model.bin")
    with pytest.raises(AdapterError, match=r"adapter_model\.bin .* is not loaded for safety"):
        load_adapter(make_llama(), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="is not valid JSON"):
        read_adapter_config(tmp_path)


def test_adapter_with_other_modules(make_llama, tmp_path):
    save_adapter(apply_lora(make_llama(), LoraConfig(dim=2, target_modules=["q_proj"])), tmp_path)
    model = apply_lora(make_llama(), LoraConfig(dim=2, target_modules=["q_proj", "v_proj"]))
    with pytest.raises(
        AdapterError, match=r"missing 4: model\.layers\.0\.self_attn\.v_proj\.lora_A\.weight"
    ):
        load_adapter(model, tmp_path)


def test_save_without_lora():
    with pytest.raises(AdapterError, match="has no LoRA modules"):
        save_adapter(nn.Linear(4, 4), "unused")
