"""Context-parallel finetune.llm (`distributed.cp_size`): split sequences train as one process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _shared import SFT
from safetensors.torch import load_file

from automodel.core.config import ConfigError, load_config
from automodel.recipes import read_distributed

STEPS, MIDDLE = 6, 3
CP = ["--+distributed.cp_size=2"]
PACKED = ["--+packed_sequence.packed_sequence_size=64"]
LAYOUTS = {  # (processes, overrides): global batch 8 = local 2 × 4 micro-batches × dp 1, or
    # FSDP2 sharded over the two cp ranks, recomputing each block (its all-gathers) in backward
    "cp2_fsdp2": (2, [*CP, "--+distributed.activation_checkpointing=true"]),
    "dp2_cp2_ddp": (4, [*CP, "--+distributed.strategy=ddp"]),  # 2 × 2 × dp 2
    # heads split over tp inside each cp rank's attention, the residual stream over the sequence
    "tp2_sp_cp2": (4, [*CP, "--+distributed.tp_size=2", "--+distributed.sequence_parallel=true"]),
    "cp2_packed": (2, [*CP, *PACKED]),  # documents attend within themselves across the split
}


@pytest.fixture(scope="module")
def overrides(short_run, small_data) -> Callable[..., list[str]]:
    """`overrides(run_dir, *extra)`: 6 steps of global batch 8 (local 2), validation and a
    checkpoint at steps 3 and 6."""
    return lambda run_dir, *extra: short_run(run_dir, small_data, STEPS, MIDDLE, *extra)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, overrides, run_recipe, monkeypatch_module) -> Path:
    """The reference: the whole sequences in this process, 4 micro-batches per step."""
    run_dir = tmp_path_factory.mktemp("cp_one")
    recipe = run_recipe(SFT, overrides(run_dir))
    assert recipe.parallel.cp is None and recipe.step_scheduler.grad_acc_steps == 4
    return run_dir


@pytest.fixture(scope="module")
def one_process_packed(tmp_path_factory, overrides, run_recipe, monkeypatch_module) -> Path:
    """The reference for packed rows: rows of 64 tokens, each document attending to itself."""
    run_dir = tmp_path_factory.mktemp("cp_one_packed")
    run_recipe(SFT, overrides(run_dir, *PACKED))
    return run_dir


@pytest.fixture(scope="module")
def launched(tmp_path_factory, overrides, pooled_layouts):
    """`launched(layout)`: (run dir, stderr) of LAYOUTS, one torchrun launch per process count."""
    return pooled_layouts(tmp_path_factory, "cp", SFT, LAYOUTS, overrides)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_context_parallel_matches_one_process(
    layout, launched, one_process, one_process_packed, assert_same_training
):
    """Per-step losses, label counts (of the shards, summed), grad norms, validation and the
    final weights."""
    run_dir, stderr = launched(layout)
    nproc, extra = LAYOUTS[layout]
    dp = nproc // 4 if "--+distributed.tp_size=2" in extra else nproc // 2
    assert f"over {nproc} process(es) (rank 0 of {dp}) on cpu" in stderr
    assert "context parallel 2" in stderr
    # row-parallel layers sum in another order: single weights up to ~5e-5 off after 6 Adam
    # steps with tensor parallel (as in test_llm_distributed), 2e-5 otherwise
    weight_atol = 1e-4 if "tp2" in layout else 2e-5
    reference = one_process_packed if "packed" in layout else one_process
    assert_same_training(run_dir, reference, range(1, STEPS + 1), MIDDLE, weight_atol)


def test_the_checkpoint_loads_in_plain_transformers(launched):
    """The attention switch is not saved: the model folder is a plain Hugging Face one."""
    from transformers import AutoModelForCausalLM

    run_dir, _ = launched("cp2_fsdp2")
    model_dir = run_dir / f"checkpoints/epoch_0_step_{STEPS}/model"
    assert "automodel_cp" not in (model_dir / "config.json").read_text()
    loaded = AutoModelForCausalLM.from_pretrained(model_dir)
    assert loaded.config._attn_implementation in ("sdpa", "eager")
    weights = load_file(model_dir / "model.safetensors")
    for name, tensor in loaded.state_dict().items():
        if name in weights:  # the tied lm_head is saved once
            assert torch.equal(tensor, weights[name]), name


def test_context_parallel_checkpoint_resumes_on_one_process(
    launched, one_process, overrides, run_recipe, assert_same_training, resume_dir_from, tmp_path
):
    """cp 2 -> 1 process: DCP reshards the optimizer, the data position carries over."""
    source, _ = launched("cp2_fsdp2")
    resume_dir_from(source, tmp_path, MIDDLE)
    recipe = run_recipe(SFT, overrides(tmp_path, "--+checkpoint.restore_from=latest"))
    assert recipe.step_scheduler.step == STEPS
    assert_same_training(tmp_path, one_process, range(MIDDLE + 1, STEPS + 1), MIDDLE)


def test_one_process_checkpoint_resumes_with_context_parallel(
    one_process, overrides, run_cli, assert_same_training, resume_dir_from, tmp_path
):
    resume_dir_from(one_process, tmp_path, MIDDLE)
    stderr = run_cli(SFT, overrides(tmp_path, *CP, "--+checkpoint.restore_from=latest"))
    assert f"at step {MIDDLE} (saved by 1 process(es), now 2)" in stderr
    assert_same_training(tmp_path, one_process, range(MIDDLE + 1, STEPS + 1), MIDDLE)


@pytest.mark.parametrize(
    ("extra", "world_size", "key", "message"),
    [
        (
            [],
            1,
            "distributed.dp_size",
            r"cp_size 2 × tp_size 1 = 2 does not divide the world size 1",
        ),
        (
            ["--+distributed.pp_size=2"],  # pp × cp is supported: the sizes must still fit
            6,
            "distributed.dp_size",
            r"pp_size 2 × cp_size 2 × tp_size 1 = 4 does not divide the world size 6",
        ),
        (["--+distributed.cp_size=3"], 4, "distributed.dp_size", "cp_size 3 × tp_size 1 = 3"),
    ],
)
def test_unsupported_context_parallel_settings_are_config_errors(
    extra, world_size, key, message, monkeypatch_module
):
    cfg = load_config(SFT, [*CP, *extra])
    with pytest.raises(ConfigError, match=message) as caught:
        read_distributed(cfg, world_size=world_size)
    assert caught.value.problems[0].key == key
