"""Exact resume of the LLM recipe: a run stopped at step k and resumed equals the uninterrupted run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from _shared import SFT
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, head_of_asset) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    return (
        head_of_asset("reverse_train.jsonl", root / "train.jsonl", 64),
        head_of_asset("reverse_validation.jsonl", root / "val.jsonl", 16),
    )


def _overrides(run_dir: Path, data: tuple[Path, Path], max_steps: int, *extra: str) -> list[str]:
    """Shuffled, packed, 2 micro-batches per step, dropout on, validation every 2 steps.

    64 samples pack into about 10 rows of 128 tokens: 2 optimizer steps per epoch, so step 3
    is in the middle of the second epoch.
    """
    return [
        f"--dataset.path={data[0]}",
        f"--validation_dataset.path={data[1]}",
        "--step_scheduler.global_batch_size=4",
        "--step_scheduler.local_batch_size=2",
        f"--step_scheduler.max_steps={max_steps}",
        "--step_scheduler.val_every_steps=2",
        "--step_scheduler.ckpt_every_steps=3",
        "--step_scheduler.log_every_steps=1",
        "--+packed_sequence.packed_sequence_size=128",
        "--+model.attention_dropout=0.1",
        "--dataloader.shuffle=true",
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
        SFT, _overrides(run_dir, data, max_steps, *extra)
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, train, monkeypatch_module):
    run_dir = tmp_path_factory.mktemp("full")
    recipe = train(run_dir, 7)
    return recipe, run_dir


def test_stop_at_step_3_and_resume_is_bitwise_identical(full_run, train, jsonl_rows, tmp_path):
    full, full_dir = full_run
    epochs = [row["epoch"] for row in jsonl_rows(full_dir / "training.jsonl")]
    assert epochs == [0, 0, 1, 1, 2, 2, 3], "the run must cross epochs and stop mid-epoch"
    # The interrupted run: its state as it was at step 3, checkpoint and logs.
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    step3 = next((full_dir / "checkpoints").glob("epoch_*_step_3"))
    shutil.copytree(step3, resumed_dir / "checkpoints" / step3.name)
    for name in ("training.jsonl", "validation.jsonl"):
        shutil.copy(full_dir / name, resumed_dir / name)  # holds rows past step 3, to be cut

    resumed = train(
        resumed_dir, 7, "--+checkpoint.restore_from=latest", "--+checkpoint.async_save=true"
    )

    assert jsonl_rows(resumed_dir / "training.jsonl") == jsonl_rows(full_dir / "training.jsonl")
    assert jsonl_rows(resumed_dir / "validation.jsonl") == jsonl_rows(full_dir / "validation.jsonl")
    # Wall time on every row; elapsed_s counts on from the checkpoint over the restart.
    timed = jsonl_rows(resumed_dir / "training.jsonl", drop_timing=False)
    elapsed = [row["elapsed_s"] for row in timed]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0 and all("time" in r for r in timed)
    assert elapsed[3] > elapsed[2]  # step 4 came after the restart, yet counts on
    for (name, a), b in zip(
        full.unwrapped.state_dict().items(), resumed.unwrapped.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    latest = (full_dir / "checkpoints" / "LATEST").read_text().strip()
    assert (resumed_dir / "checkpoints" / "LATEST").read_text().strip() == latest
    written = [
        load_file(d / "checkpoints" / latest / "model/model.safetensors")
        for d in (full_dir, resumed_dir)
    ]
    assert written[0].keys() == written[1].keys()
    assert all(torch.equal(written[0][k], written[1][k]) for k in written[0])  # async save too


def test_resume_with_more_steps_keeps_the_lr_schedule(full_run, train, jsonl_rows, tmp_path):
    """max_steps raised on resume: the schedule that ended at step 7 stays at min_lr."""
    _, full_dir = full_run
    run_dir = tmp_path / "longer"
    shutil.copytree(full_dir / "checkpoints", run_dir / "checkpoints")
    train(run_dir, 9, "--+checkpoint.restore_from=latest")
    rows = jsonl_rows(run_dir / "training.jsonl")
    assert [r["step"] for r in rows] == [8, 9]
    assert [r["lr"] for r in rows] == [pytest.approx(1e-4)] * 2  # min_lr of tiny_sft.yaml


def test_resume_into_a_different_shape_is_a_clear_error_exit_2(full_run, data, tmp_path, capsys):
    from automodel.recipes.llm import main

    _, full_dir = full_run
    argv = _overrides(tmp_path, data, 7, "--+model.hidden_size=32", "--+model.head_dim=8")
    argv += [f"--+checkpoint.restore_from={next((full_dir / 'checkpoints').glob('*_step_3'))}"]
    assert main(["-c", str(SFT), *argv]) == 2
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "model.embed_tokens.weight" in err
    assert "Traceback" not in err
