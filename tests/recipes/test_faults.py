"""Faults a real cluster throws at a run: a diverging loss, a full disk, data that changed under
a checkpoint. Each is reported as what it is, and no good checkpoint is lost."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _shared import SFT
from safetensors.torch import load_file

from automodel.core.config import UserError

STAGING = ".staging-"


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "training.jsonl").read_text().splitlines()]


def _weights(checkpoint: Path) -> dict:
    return load_file(checkpoint / "model" / "model.safetensors")


def test_a_diverging_run_skips_nonfinite_steps_then_stops_naming_them(
    small_data, tmp_path, short_run, run_recipe, monkeypatch_module
):
    """lr 1e4: the gradients turn NaN; those steps change nothing, and the third in a row stops
    the run with the steps named. The checkpoints saved meanwhile hold the last good weights."""
    overrides = short_run(
        tmp_path, small_data, 20, 1, "--optimizer.lr=1e4", "--+nonfinite.patience=3"
    )
    with pytest.raises(UserError, match="training diverged") as error:
        run_recipe(SFT, overrides)
    rows = _rows(tmp_path)
    first = next(row["step"] for row in rows if row["skipped"])
    assert first >= 2, "the first step must be finite for this test to mean anything"
    assert [row["step"] for row in rows if row["skipped"]] == [first, first + 1, first + 2]
    assert rows[-1]["step"] == first + 2  # stopped there
    assert f"from step {first} to step {first + 2}" in str(error.value)
    assert "nonfinite.patience: 3" in str(error.value)
    before = _weights(tmp_path / f"checkpoints/epoch_0_step_{first - 1}")
    after = _weights(tmp_path / f"checkpoints/epoch_0_step_{first + 1}")  # two skipped steps on
    assert before.keys() == after.keys()
    assert all(before[k].equal(after[k]) for k in before)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (room for two checkpoints of the tiny model, not three)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_reported_and_a_rerun_with_retention_finishes(
    small_data, tmp_path, small_disk, short_run, run_recipe, monkeypatch_module, caplog
):
    """The third checkpoint does not fit: the warnings come first, then a message naming the
    disk and the newest complete checkpoint; nothing partial is left, and rerunning with
    keep_last_n resumes from that checkpoint and finishes on the same disk."""
    ckpt = small_disk / "checkpoints"
    overrides = [*short_run(tmp_path, small_data, 4, 1), f"--checkpoint.checkpoint_dir={ckpt}"]
    with caplog.at_level(logging.WARNING), pytest.raises(UserError) as error:
        run_recipe(SFT, overrides)
    message = str(error.value)
    assert "checkpoint epoch_0_step_3 did not fit" in message
    assert f"the disk of {ckpt} is full" in message
    assert f"The newest complete checkpoint is {ckpt / 'epoch_0_step_2'} (LATEST)" in message
    assert "rerunning resumes from it" in message
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("every checkpoint is kept (keep_last_n is unset)" in w for w in warnings)
    assert any("the next checkpoint will likely not fit" in w for w in warnings)
    assert sorted(p.name for p in ckpt.iterdir()) == ["LATEST", "epoch_0_step_1", "epoch_0_step_2"]
    assert (ckpt / "LATEST").read_text().strip() == "epoch_0_step_2"

    caplog.clear()
    run_recipe(SFT, [*overrides, "--checkpoint.keep_last_n=1"])
    assert sorted(p.name for p in ckpt.iterdir()) == ["LATEST", "epoch_0_step_4"]
    assert [row["step"] for row in _rows(tmp_path)] == [1, 2, 3, 4]


def test_resuming_on_changed_data_is_refused_unless_asked_for(
    small_data, tmp_path, short_run, run_recipe, monkeypatch_module, caplog
):
    """Another file under the same key: a clear error naming what changed and the key that
    accepts it; with that key the run goes on from the start of the saved epoch."""
    run_recipe(SFT, short_run(tmp_path, small_data, 2, 2))
    other = tmp_path / "other.jsonl"
    shutil.copy(small_data / "train.jsonl", other)
    lines = other.read_text().splitlines(keepends=True)
    other.write_text("".join(lines[1:] + lines[:1]))  # the same rows, another order
    resumed = [*short_run(tmp_path, small_data, 4, 2), f"--dataset.path={other}"]
    with pytest.raises(UserError) as error:
        run_recipe(SFT, resumed)
    message = str(error.value)
    assert "not the data this checkpoint was trained on" in message
    assert "the same number of samples, but their tokens differ" in message
    assert "dataloader.on_data_change: restart_epoch" in message
    assert [row["step"] for row in _rows(tmp_path)] == [1, 2]  # nothing written meanwhile

    with caplog.at_level(logging.WARNING):
        run_recipe(SFT, [*resumed, "--+dataloader.on_data_change=restart_epoch"])
    assert any("read from the start of epoch 0" in r.getMessage() for r in caplog.records)
    assert [row["step"] for row in _rows(tmp_path)] == [1, 2, 3, 4]
    assert os.path.isdir(tmp_path / "checkpoints/epoch_0_step_4")
