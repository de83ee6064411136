"""Adapter folders in the peft format: ours load in peft, peft's load in ours, same logits.

Logits are compared with rtol=1e-5, atol=1e-6 (float32 models, same adapter tensors).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file

from automodel.peft import (
    LoraConfig,
    apply_lora,
    load_adapter,
    lora_modules,
    lora_state_dict,
    read_adapter_config,
    save_adapter,
)

TOL = dict(rtol=1e-5, atol=1e-6)
# peft calls a transformers API that transformers 5 marks deprecated; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def _logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_our_adapter_loads_in_peft(make_llama, input_ids, randomize_adapters, tmp_path, use_dora):
    ours = make_llama()
    apply_lora(
        ours,
        LoraConfig(
            dim=4,
            alpha=12,
            dropout=0.05,
            target_modules=["q_proj", "v_proj", "up_proj"],
            use_dora=use_dora,
        ),
    )
    randomize_adapters(ours, seed=3)
    save_adapter(ours, tmp_path, base_model_name_or_path="tiny-llama")

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == "tiny-llama"
    assert config["r"] == 4
    assert config["lora_alpha"] == 12
    assert config["lora_dropout"] == 0.05
    assert config["use_rslora"] is False
    assert config["use_dora"] is use_dora
    assert config["bias"] == "none"
    paths = [path for path, _ in lora_modules(ours)]
    assert len(paths) == 6
    assert sorted(config["target_modules"]) == sorted(paths)

    with safe_open(str(tmp_path / "adapter_model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    suffixes = ["lora_A.weight", "lora_B.weight"] + (["lora_magnitude_vector"] if use_dora else [])
    assert keys == {f"base_model.model.{p}.{s}" for p in paths for s in suffixes}
    assert not any(".default" in k for k in keys)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs = PeftModel.from_pretrained(make_llama(), tmp_path)
    assert not [w for w in caught if "missing adapter keys" in str(w.message)]
    # Everything peft holds for the adapter is exactly what the file holds, key for key.
    theirs_sd = get_peft_model_state_dict(theirs)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert set(theirs_sd) == set(saved)
    for key, tensor in saved.items():
        assert torch.equal(theirs_sd[key], tensor), key
    # peft's own loader reports no missing or unexpected adapter key for the file.
    result = theirs.load_adapter(tmp_path, adapter_name="again")
    assert not [k for k in result.missing_keys if "lora_" in k]
    assert not result.unexpected_keys
    theirs.set_adapter("default")

    assert theirs.peft_config["default"].use_dora is use_dora
    torch.testing.assert_close(_logits(theirs, input_ids), _logits(ours, input_ids), **TOL)


PEFT_SAVED = [
    ("lora", dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "down_proj"]), 6),
    ("dora", dict(r=4, lora_alpha=8, target_modules=["v_proj", "o_proj"], use_dora=True), 4),
    (
        "rslora_gaussian",
        dict(
            r=16,
            lora_alpha=4,
            target_modules=["gate_proj"],
            use_rslora=True,
            init_lora_weights="gaussian",
        ),
        2,
    ),
    (
        "regex_string",
        dict(r=4, lora_alpha=8, target_modules=r".*\.layers\.1\.self_attn\.(q|v)_proj"),
        2,
    ),
    ("all_linear", dict(r=2, lora_alpha=4, target_modules="all-linear"), 14),
]


@pytest.mark.parametrize(
    ("case", "peft_kwargs", "n_modules"), PEFT_SAVED, ids=[c[0] for c in PEFT_SAVED]
)
def test_peft_adapter_loads_in_ours(make_llama, input_ids, tmp_path, case, peft_kwargs, n_modules):
    torch.manual_seed(0)
    theirs = get_peft_model(make_llama(), PeftLoraConfig(task_type="CAUSAL_LM", **peft_kwargs))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
            elif "lora_magnitude_vector" in name:
                param.mul_(1 + 0.2 * torch.randn(param.shape, generator=gen))
    theirs.save_pretrained(tmp_path)
    saved_config = json.loads((tmp_path / "adapter_config.json").read_text())
    if case == "regex_string":
        assert isinstance(saved_config["target_modules"], str)

    config = read_adapter_config(tmp_path)
    assert (config.dim, config.alpha) == (peft_kwargs["r"], peft_kwargs["lora_alpha"])
    assert config.use_dora is peft_kwargs.get("use_dora", False)
    assert config.use_rslora is peft_kwargs.get("use_rslora", False)

    ours = load_adapter(make_llama(), tmp_path)
    assert len(list(lora_modules(ours))) == n_modules
    assert sorted(p for p, _ in lora_modules(ours)) == sorted(
        n.removeprefix("base_model.model.").removesuffix(".lora_A.default.weight")
        for n, _ in theirs.named_parameters()
        if n.endswith("lora_A.default.weight")
    )
    torch.testing.assert_close(_logits(ours, input_ids), _logits(theirs, input_ids), **TOL)
    assert not torch.allclose(_logits(ours, input_ids), _logits(make_llama(), input_ids), atol=1e-3)


def test_all_linear_string_config_loads(make_llama, input_ids, tmp_path):
    """A config that says target_modules: "all-linear" (peft's wildcard) selects all linears but the head."""
    torch.manual_seed(0)
    theirs = get_peft_model(
        make_llama(), PeftLoraConfig(r=2, lora_alpha=4, target_modules="all-linear")
    )
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    theirs.save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "target_modules": "all-linear"}))

    config = read_adapter_config(tmp_path)
    assert config.match_all_linear
    ours = load_adapter(make_llama(), tmp_path)
    assert len(list(lora_modules(ours))) == 14
    torch.testing.assert_close(_logits(ours, input_ids), _logits(theirs, input_ids), **TOL)


def test_round_trip_through_our_files(make_llama, input_ids, randomize_adapters, tmp_path):
    ours = make_llama()
    apply_lora(
        ours, LoraConfig(dim=4, alpha=4, match_all_linear=True, use_rslora=True, init_a="gaussian")
    )
    randomize_adapters(ours)
    save_adapter(ours, tmp_path)
    config = read_adapter_config(tmp_path)
    assert config.use_rslora and config.init_a == "gaussian" and config.dim == 4

    loaded = load_adapter(make_llama(), tmp_path)
    for key, tensor in lora_state_dict(ours).items():
        assert torch.equal(lora_state_dict(loaded)[key], tensor), key
    torch.testing.assert_close(_logits(loaded, input_ids), _logits(ours, input_ids), rtol=0, atol=0)

    # Loading into a model that already carries matching LoRA overwrites its adapters.
    again = make_llama()
    apply_lora(again, LoraConfig(dim=4, alpha=4, match_all_linear=True, use_rslora=True))
    load_adapter(again, tmp_path)
    torch.testing.assert_close(_logits(again, input_ids), _logits(ours, input_ids), rtol=0, atol=0)


def test_adapter_weights_file_is_plain_safetensors(make_llama, randomize_adapters, tmp_path):
    """adapter_model.safetensors carries {"format": "pt"}, loads bit for bit with
    safetensors.torch.load_file, and the atomic write leaves no temporary file behind."""
    model = make_llama()
    apply_lora(model, LoraConfig(dim=4, alpha=8, match_all_linear=True, lora_dtype="bf16"))
    randomize_adapters(model)
    save_adapter(model, tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt"}
    loaded = load_file(path)
    expected = {"base_model.model." + k: v for k, v in lora_state_dict(model).items()}
    assert set(loaded) == set(expected) and expected
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype == torch.bfloat16, name
        assert torch.equal(loaded[name], tensor), name
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
