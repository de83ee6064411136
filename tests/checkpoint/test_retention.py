"""latest(), leftovers of interrupted saves, keep_last_n, and a real SIGKILL in the middle of saves."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from automodel.checkpoint import (
    LATEST_FILE,
    MANIFEST_FILE,
    Checkpointer,
    find_latest,
    read_checkpoint_info,
)


class Value:
    def __init__(self, value: int = 0) -> None:
        self.value = value

    def state_dict(self) -> dict[str, object]:
        return {"value": self.value, "blob": torch.full((1000,), float(self.value))}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.value = state["value"]


def save_steps(ckpt: Checkpointer, *steps: int) -> list[Path]:
    return [ckpt.save(0, s, train_states={"v": Value(s)}) for s in steps]


def test_latest_ignores_partial_and_hidden_dirs(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path)
    first, second = save_steps(ckpt, 10, 20)
    # what an interrupted save or prune leaves behind, made to look as complete as possible
    for name in (".staging-epoch_0_step_30", ".trash-epoch_0_step_40-1234abcd"):
        (tmp_path / name).mkdir()
        (tmp_path / name / MANIFEST_FILE).write_text((second / MANIFEST_FILE).read_text())
    (tmp_path / "epoch_0_step_50").mkdir()  # no manifest: never published
    (tmp_path / "epoch_0_step_50" / "model").mkdir()

    assert ckpt.latest() == second
    assert ckpt.checkpoints() == [first, second]
    assert find_latest(tmp_path) == second
    assert Checkpointer(tmp_path / "nowhere").latest() is None


def test_latest_falls_back_when_LATEST_is_stale(tmp_path: Path, caplog) -> None:
    ckpt = Checkpointer(tmp_path)
    _, newest, _ = save_steps(ckpt, 5, 30, 20)  # LATEST -> step 20, highest step 30
    assert ckpt.latest() == tmp_path / "epoch_0_step_20"  # LATEST wins while valid

    (tmp_path / LATEST_FILE).write_text("epoch_0_step_99\n")  # points at a missing dir
    with caplog.at_level(logging.WARNING):
        assert ckpt.latest() == newest
    assert "epoch_0_step_99" in caplog.text and "epoch_0_step_30" in caplog.text

    (tmp_path / LATEST_FILE).write_text("../../etc\n")
    assert ckpt.latest() == newest
    (tmp_path / LATEST_FILE).unlink()
    assert ckpt.latest() == newest


def test_leftovers_are_removed_by_the_next_save(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path)
    staging = tmp_path / ".staging-epoch_0_step_2"
    trash = tmp_path / ".trash-epoch_0_step_1-0000"
    for d in (staging, trash):
        (d / "model").mkdir(parents=True)
        (d / "model" / "model.safetensors").write_bytes(b"partial")
    pointer_tmp = tmp_path / f".{LATEST_FILE}.tmp-12345"  # a LATEST update killed mid-way
    pointer_tmp.write_text("epoch_0_step_")
    (path,) = save_steps(ckpt, 3)
    assert not staging.exists() and not trash.exists() and not pointer_tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST_FILE, path.name]


def test_resave_same_step_replaces_it(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(0, 1, train_states={"v": Value(1)})
    assert ckpt.save(0, 1, train_states={"v": Value(2)}, model=torch.nn.Linear(2, 2)) == path
    assert read_checkpoint_info(path).parts == ("model", "train_states")
    restored = Value()
    ckpt.restore(path, train_states={"v": restored})
    assert restored.value == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST_FILE, path.name]


def test_keep_last_n_never_deletes_the_LATEST_target(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, keep_last_n=2)
    save_steps(ckpt, 1, 2, 3, 4)
    assert [p.name for p in ckpt.checkpoints()] == ["epoch_0_step_3", "epoch_0_step_4"]

    # a run resumed from an older step: LATEST points below the newest steps on disk
    one = Checkpointer(tmp_path, keep_last_n=1)
    save_steps(one, 2)
    assert [p.name for p in one.checkpoints()] == ["epoch_0_step_2", "epoch_0_step_4"]
    assert one.latest() == tmp_path / "epoch_0_step_2"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


_KILL_SCRIPT = """
import sys, torch
from automodel.checkpoint import Checkpointer

class Value:
    def __init__(self, v): self.v = v
    def state_dict(self): return {"value": self.v, "blob": torch.full((1000,), float(self.v))}

model = torch.nn.Sequential(*[torch.nn.Linear(128, 128) for _ in range(4)])
optimizer = torch.optim.AdamW(model.parameters())
ckpt = Checkpointer(sys.argv[1], keep_last_n=2)
for step in range(1, 10**6):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(step)
    ckpt.save(0, step, model=model, optimizer=optimizer, train_states={"v": Value(step)})
    print(step, flush=True)
"""


def test_sigkill_during_saves_leaves_a_loadable_latest(tmp_path: Path) -> None:
    script = tmp_path / "loop.py"
    script.write_text(textwrap.dedent(_KILL_SCRIPT))
    root = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        for _ in range(2):  # let a few saves publish, then kill in the middle of the next ones
            assert proc.stdout.readline(), "the save loop died"
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()

    ckpt = Checkpointer(root, keep_last_n=2)
    latest = ckpt.latest()
    assert latest is not None
    step = read_checkpoint_info(latest).step
    model = torch.nn.Sequential(*[torch.nn.Linear(128, 128) for _ in range(4)])
    optimizer = torch.optim.AdamW(model.parameters())
    value = Value()
    ckpt.restore(latest, model=model, optimizer=optimizer, train_states={"v": value})
    assert value.value == step >= 2
    assert all(torch.all(p == step) for p in model.parameters())
    save_steps(ckpt, step + 1)  # the next save cleans up whatever the kill left
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("bad", ["epoch_1_step_", "latest", ""])
def test_latest_file_with_garbage_is_ignored(tmp_path: Path, bad: str) -> None:
    ckpt = Checkpointer(tmp_path)
    (path,) = save_steps(ckpt, 7)
    (tmp_path / LATEST_FILE).write_text(bad)
    assert ckpt.latest() == path


def test_set_aside_moves_every_checkpoint_and_deletes_nothing(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path / "ckpt")
    saved = save_steps(ckpt, 10, 20)
    (tmp_path / "ckpt" / ".staging-epoch_0_step_30").mkdir()  # an interrupted save goes too
    moved = ckpt.set_aside(tmp_path / "previous" / "ckpt")
    assert moved == saved
    assert not (tmp_path / "ckpt").exists() and ckpt.latest() is None
    aside = Checkpointer(tmp_path / "previous" / "ckpt")
    assert aside.latest() == tmp_path / "previous" / "ckpt" / "epoch_0_step_20"
    assert (tmp_path / "previous" / "ckpt" / ".staging-epoch_0_step_30").is_dir()
    state = Value()
    aside.restore(aside.latest(), train_states={"v": state})
    assert state.value == 20
    assert ckpt.set_aside(tmp_path / "previous" / "again") == []  # nothing left to move
    assert not (tmp_path / "previous" / "again").exists()


def test_set_aside_after_a_step_keeps_the_branch_point_and_both_latests(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path / "ckpt")
    first, second, third = save_steps(ckpt, 10, 20, 30)
    moved = ckpt.set_aside(tmp_path / "later", after_step=10)
    assert moved == [second, third]
    assert ckpt.checkpoints() == [first]
    assert (tmp_path / "ckpt" / LATEST_FILE).read_text().strip() == first.name
    aside = Checkpointer(tmp_path / "later")
    assert [p.name for p in aside.checkpoints()] == [second.name, third.name]
    assert aside.latest() == tmp_path / "later" / third.name
    assert read_checkpoint_info(aside.latest()).step == 30
    assert ckpt.set_aside(tmp_path / "none" / "later", after_step=10) == []  # nothing later
    assert not (tmp_path / "none").exists()
    save_steps(ckpt, 20)  # the new line saves step 20 where the old one was moved away from
    assert Checkpointer(tmp_path / "later").latest() == tmp_path / "later" / third.name


def test_weights_with_nan_are_never_published_nor_counted(tmp_path: Path) -> None:
    """A model holding NaN is refused before anything is written: LATEST, the kept checkpoints
    and the folder stay as they were, so retention cannot push a good checkpoint out."""
    from automodel.checkpoint import NonFiniteWeightsError

    model = torch.nn.Linear(4, 2)
    ckpt = Checkpointer(tmp_path, keep_last_n=1)
    good = ckpt.save(0, 1, model=model)
    with torch.no_grad():
        model.bias[1] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"1 parameters hold NaN or inf \(bias\)"):
        ckpt.save(0, 2, model=model)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST_FILE, good.name]
    assert ckpt.latest() == good
