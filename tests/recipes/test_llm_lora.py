"""LoRA in the LLM recipe: adapter-only checkpoints in the PEFT format, exact resume, merged export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _shared import LORA, REPO
from safetensors import safe_open
from safetensors.torch import load_file

BASE = REPO / "examples/llm_finetune/assets/tiny_llama_base"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, head_of_asset) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    return (
        head_of_asset("reverse_train.jsonl", root / "train.jsonl", 48),
        head_of_asset("reverse_validation.jsonl", root / "val.jsonl", 8),
    )


def _overrides(run_dir: Path, data: tuple[Path, Path], max_steps: int, *extra: str) -> list[str]:
    """Shuffled, 2 micro-batches per step, LoRA dropout on, validation and a checkpoint every 3."""
    return [
        f"--dataset.path={data[0]}",
        f"--validation_dataset.path={data[1]}",
        "--step_scheduler.global_batch_size=8",
        "--step_scheduler.local_batch_size=4",
        f"--step_scheduler.max_steps={max_steps}",
        "--step_scheduler.val_every_steps=3",
        "--step_scheduler.ckpt_every_steps=3",
        "--step_scheduler.log_every_steps=1",
        "--peft.dropout=0.1",
        "--lr_scheduler.warmup_steps=2",
        f"--logging.run_dir={run_dir}",
        f"--checkpoint.checkpoint_dir={run_dir}/checkpoints",
        "--+logging.progress=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def train(run_recipe, data):
    """`train(run_dir, max_steps, *overrides)`: one run of the example on the small data."""
    return lambda run_dir, max_steps, *extra: run_recipe(
        LORA, _overrides(run_dir, data, max_steps, *extra)
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, train, monkeypatch_module):
    run_dir = tmp_path_factory.mktemp("lora_full")
    return train(run_dir, 6), run_dir


def test_checkpoint_holds_only_the_adapter_in_the_peft_format(full_run):
    recipe, run_dir = full_run
    model_dir = next((run_dir / "checkpoints").glob("epoch_*_step_6")) / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert not names & {"config.json", "model.safetensors", "model.safetensors.index.json"}
    with safe_open(model_dir / "adapter_model.safetensors", "pt") as f:
        keys = set(f.keys())
    lora_params = {
        "base_model.model." + n for n, p in recipe.unwrapped.named_parameters() if p.requires_grad
    }
    assert keys == lora_params and all(".lora_" in k for k in keys)
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 8, 32)
    assert config["base_model_name_or_path"] == "examples/llm_finetune/assets/tiny_llama_base"
    assert "lm_head" not in " ".join(config["target_modules"])  # match_all_linear skips the head
    # The frozen base is untouched by training.
    base = load_file(BASE / "model.safetensors")
    state = recipe.unwrapped.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.items())


def test_peft_loads_the_checkpoint_and_transformers_loads_the_merged_model(full_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe, run_dir = full_run
    model_dir = next((run_dir / "checkpoints").glob("epoch_*_step_6")) / "model"
    ids = torch.randint(4, 32, (2, 12), generator=torch.Generator().manual_seed(0))
    recipe.unwrapped.eval()
    with torch.no_grad():
        ours = recipe.unwrapped(ids).logits
        base = AutoModelForCausalLM.from_pretrained(BASE)
        via_peft = PeftModel.from_pretrained(base, model_dir).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged_model").eval()(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(BASE).eval()(ids).logits
    assert not torch.allclose(ours, plain, atol=1e-3), "the adapter must have learnt something"
    torch.testing.assert_close(via_peft, ours, rtol=0, atol=1e-6)
    torch.testing.assert_close(merged, ours, rtol=1e-5, atol=1e-5)


def test_stop_and_resume_is_bitwise_identical(full_run, train, jsonl_rows, tmp_path):
    full, full_dir = full_run
    resumed_dir = tmp_path / "resumed"
    step3 = next((full_dir / "checkpoints").glob("epoch_*_step_3"))
    shutil.copytree(step3, resumed_dir / "checkpoints" / step3.name)
    for name in ("training.jsonl", "validation.jsonl"):
        shutil.copy(full_dir / name, resumed_dir / name)

    resumed = train(resumed_dir, 6, "--+checkpoint.restore_from=latest")

    assert [r["step"] for r in jsonl_rows(resumed_dir / "training.jsonl")] == list(range(1, 7))
    assert jsonl_rows(resumed_dir / "training.jsonl") == jsonl_rows(full_dir / "training.jsonl")
    assert jsonl_rows(resumed_dir / "validation.jsonl") == jsonl_rows(full_dir / "validation.jsonl")
    for (name, a), b in zip(
        full.unwrapped.state_dict().items(), resumed.unwrapped.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_full_checkpoint_into_a_lora_run_is_a_clear_error(
    data, run_recipe, tmp_path, capsys, monkeypatch_module
):
    from automodel.recipes.llm import main

    full_ckpt = tmp_path / "full"
    no_lora = ("--~peft", "--~checkpoint.save_merged_model")
    run_recipe(LORA, _overrides(full_ckpt, data, 2, *no_lora))  # a full-weights checkpoint
    target = next((full_ckpt / "checkpoints").glob("epoch_*_step_2"))
    argv = _overrides(tmp_path / "again", data, 3, f"--+checkpoint.restore_from={target}")
    assert main(["-c", str(LORA), *argv]) == 2
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "adapter" in err.lower()
    assert "Traceback" not in err


def test_bad_lora_settings_name_the_key(tmp_path, data, capsys, monkeypatch_module):
    from automodel.recipes.llm import main

    argv = _overrides(tmp_path, data, 2, "--peft.dim=0")
    assert main(["-c", str(LORA), *argv]) == 2
    err = capsys.readouterr().err
    assert "peft" in err and "dim" in err and "tiny_lora.yaml" in err
    argv = _overrides(tmp_path, data, 2, "--+peft.target_modules=[nope_proj]")
    assert main(["-c", str(LORA), *argv]) == 2
    err = capsys.readouterr().err
    assert "nope_proj" in err and "q_proj" in err
    argv = ["--validate-only", "-c", str(LORA), "--~peft"]  # merging without adapters
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "checkpoint.save_merged_model" in err and "merging needs adapters" in err
    if not torch.cuda.is_available():
        argv = _overrides(tmp_path, data, 2, "--+peft.use_triton=true")
        assert main(["-c", str(LORA), *argv]) == 2
        err = capsys.readouterr().err
        assert "peft.use_triton" in err and "CUDA" in err and "Traceback" not in err


def test_qlora_trains_the_adapter_and_exports_a_dense_merged_model(
    tmp_path, train, monkeypatch_module
):
    from automodel.peft import lora_modules

    recipe = train(tmp_path, 2, "--+peft.quantize_base=nf4")
    wrapped = [m for _, m in lora_modules(recipe.unwrapped)]
    assert wrapped and all(type(m.weight).__name__ == "NF4Tensor" for m in wrapped)
    adapter = next((tmp_path / "checkpoints").glob("epoch_*_step_2")) / "model"
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        assert all(".lora_" in k for k in f.keys())  # noqa: SIM118
    with safe_open(tmp_path / "merged_model" / "model.safetensors", "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    assert dtypes == {"F32"}, "merged NF4 weights come back in the base model's dtype"
