"""Async save: same result as sync, a true snapshot, one save in flight, errors surface later."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from automodel.checkpoint import SAFE_WEIGHTS_NAME, Checkpointer, read_checkpoint_info
from automodel.checkpoint import _save as save_module


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Background writes block until the returned event is set."""
    event = threading.Event()
    real = save_module.save_consolidated

    def gated(*args, **kwargs):
        assert event.wait(60), "the test never opened the gate"
        return real(*args, **kwargs)

    monkeypatch.setattr(save_module, "save_consolidated", gated)
    return event


def test_async_save_equals_sync_save(tmp_path: Path, make_run, assert_same) -> None:
    run = make_run(0, tie=True)
    run.step()
    sync_path = Checkpointer(tmp_path / "sync").save(2, 5, **run.states())
    with Checkpointer(tmp_path / "async", async_save=True) as ckpt:
        async_path = ckpt.save(2, 5, **run.states())
    assert async_path == tmp_path / "async" / "epoch_2_step_5"
    assert ckpt.latest() == async_path

    sync_info, async_info = read_checkpoint_info(sync_path), read_checkpoint_info(async_path)
    assert sync_info.files.keys() == async_info.files.keys()
    assert sync_info.parts == async_info.parts
    for rel in (f"model/{SAFE_WEIGHTS_NAME}", "train_state/rank_00000.pt"):
        assert (sync_path / rel).read_bytes() == (async_path / rel).read_bytes(), rel

    snapshots = []
    for path in (sync_path, async_path):
        other = make_run(7, tie=True)
        Checkpointer(tmp_path).restore(path, **other.states())
        snapshots.append(other.snapshot())
    assert_same(run.snapshot(), snapshots[0])
    assert_same(snapshots[0], snapshots[1])


def test_training_after_save_does_not_leak_into_the_checkpoint(
    tmp_path: Path, make_run, assert_same, gate: threading.Event
) -> None:
    run = make_run(0, tie=False)
    run.step()
    ckpt = Checkpointer(tmp_path, async_save=True)
    saved = {}
    for step in (1, 2):  # the second save copies into the first one's snapshot buffers
        gate.clear()
        path = ckpt.save(0, step, **run.states())
        saved[path] = run.snapshot()
        assert not path.exists()  # save() returned while the write is still blocked
        run.step()  # mutates parameters, optimizer state, scheduler, progress and RNG in place
        with torch.no_grad():
            for p in run.model.parameters():
                p.add_(1.0)
        gate.set()
        ckpt.wait()
        assert ckpt.latest() == path

    for path, expected in saved.items():
        restored = make_run(1, tie=False)
        ckpt.restore(path, **restored.states())
        assert_same(expected, restored.snapshot())
    ckpt.close()


def test_second_save_waits_for_the_first(tmp_path: Path, make_run, gate: threading.Event) -> None:
    run = make_run(0)
    ckpt = Checkpointer(tmp_path, async_save=True, keep_last_n=1)
    first = ckpt.save(0, 1, model=run.model)
    threading.Timer(0.3, gate.set).start()
    second = ckpt.save(0, 2, model=run.model)  # blocks until the first is published
    assert read_checkpoint_info(first).step == 1
    ckpt.close()
    assert ckpt.checkpoints() == [second]


def test_background_errors_are_raised_by_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = Checkpointer(tmp_path, async_save=True)
    good = ckpt.save(0, 1, model=torch.nn.Linear(2, 2))
    ckpt.wait()

    real_publish = save_module.publish
    failures = iter([OSError("disk full (1)"), OSError("disk full (2)"), OSError("disk full (3)")])

    def failing_publish(staging, final):
        raise next(failures)

    monkeypatch.setattr(save_module, "publish", failing_publish)
    ckpt.save(0, 2, model=torch.nn.Linear(2, 2))
    with pytest.raises(OSError, match=r"disk full \(1\)"):
        ckpt.wait()
    ckpt.wait()  # reported once
    assert ckpt.latest() == good  # the previous checkpoint is untouched

    ckpt.save(0, 3, model=torch.nn.Linear(2, 2))
    with pytest.raises(OSError, match=r"disk full \(2\)"):
        ckpt.save(0, 4, model=torch.nn.Linear(2, 2))  # the next save() raises it

    ckpt.save(0, 5, model=torch.nn.Linear(2, 2))
    with pytest.raises(OSError, match=r"disk full \(3\)"):
        ckpt.close()

    monkeypatch.setattr(save_module, "publish", real_publish)
    with Checkpointer(tmp_path, async_save=True) as again:
        path = again.save(0, 6, model=torch.nn.Linear(2, 2))
    assert again.latest() == path
    assert [p.name for p in again.checkpoints()] == ["epoch_0_step_1", "epoch_0_step_6"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
