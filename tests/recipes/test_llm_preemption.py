"""Preemption and crash safety with a real `automodel` training process and real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _shared import REPO, SFT

from automodel.checkpoint import Checkpointer, read_checkpoint_info

AUTOMODEL = Path(sys.executable).with_name("automodel")


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    argv = [
        str(AUTOMODEL), "finetune", "llm", "-c", str(SFT),
        "--step_scheduler.max_steps=100000",
        "--step_scheduler.val_every_steps=100000",
        "--step_scheduler.log_every_steps=1",
        f"--logging.run_dir={run_dir}",
        f"--checkpoint.checkpoint_dir={run_dir}/checkpoints",
        "--+logging.progress=false",
        *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    """Wait for `proc`; its stderr. A hang is killed (torchrun and workers follow it) and fails."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s: {err[-3000:]}") from None


def _steps_logged(run_dir: Path) -> list[int]:
    path = run_dir / "training.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.001)


# SIGTERM's same checks are in the rerun test below, which stops its run with it
@pytest.mark.parametrize("sig", [signal.SIGUSR1])
def test_preemption_signal_saves_after_the_step_and_exits_0(tmp_path, sig):
    proc = _start(tmp_path)
    _wait_for(lambda: len(_steps_logged(tmp_path)) >= 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert f"{sig.name} received" in err
    last = _steps_logged(tmp_path)[-1]
    latest = Checkpointer(tmp_path / "checkpoints").latest()
    assert latest is not None and read_checkpoint_info(latest).step == last
    assert f"stopped by {sig.name} after step {last}" in err


def test_rerunning_the_same_command_after_sigterm_continues_exactly(
    tmp_path, head_of_asset, jsonl_rows
):
    """Stop a run with SIGTERM, run the identical command again: the run it finishes equals, row
    for row and weight for weight, one that was never stopped."""
    flags = [
        f"--dataset.path={head_of_asset('reverse_train.jsonl', tmp_path / 'train.jsonl', 256)}",
        f"--validation_dataset.path={head_of_asset('reverse_validation.jsonl', tmp_path / 'v.jsonl', 32)}",
        "--step_scheduler.max_steps=40",  # 8 steps an epoch: the stop and the rerun cross epochs
        "--step_scheduler.val_every_steps=10",
        "--lr_scheduler.warmup_steps=2",
    ]
    reference = _start(tmp_path / "reference", *flags)  # never stopped; runs alongside
    run_dir = tmp_path / "run"
    proc = _start(run_dir, *flags)
    _wait_for(lambda: len(_steps_logged(run_dir)) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    err = _finish(proc)
    stopped = _steps_logged(run_dir)[-1]
    assert proc.returncode == 0 and stopped < 40, err[-3000:]
    assert "SIGTERM received" in err and f"stopped by SIGTERM after step {stopped}" in err
    latest = Checkpointer(run_dir / "checkpoints").latest()
    assert latest is not None and read_checkpoint_info(latest).step == stopped
    err = _finish(reference)
    assert reference.returncode == 0, err[-3000:]
    again = _start(run_dir, *flags)  # the identical command line
    err = _finish(again)
    assert again.returncode == 0, err[-3000:]
    assert f"resumed from {run_dir}/checkpoints/epoch_" in err and f"at step {stopped}" in err
    for name in ("training.jsonl", "validation.jsonl"):
        assert jsonl_rows(run_dir / name) == jsonl_rows(tmp_path / "reference" / name), name
    [final] = Checkpointer(run_dir / "checkpoints").checkpoints()[-1:]
    ours, theirs = (
        _load_weights(final),
        _load_weights(tmp_path / "reference/checkpoints" / final.name),
    )
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not (run_dir / "previous").exists()  # nothing was set aside: it was one run


@pytest.mark.slow
def test_a_signal_to_one_process_stops_every_rank_after_the_same_step(tmp_path):
    """SIGTERM reaches the processes of a job at different moments (here: only one of two)."""
    proc = _start(tmp_path, "--nproc-per-node", "2")
    _wait_for(lambda: len(_steps_logged(tmp_path)) >= 3, proc, timeout=240)
    workers = _descendants_running(proc.pid, "automodel.cli")
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGTERM)
    err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    last = _steps_logged(tmp_path)[-1]
    latest = Checkpointer(tmp_path / "checkpoints").latest()
    assert latest is not None and read_checkpoint_info(latest).step == last
    assert read_checkpoint_info(latest).world_size == 2


def _descendants_running(pid: int, text: str) -> list[int]:
    """Processes below `pid` whose command line contains `text` (the training workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            if text.encode() in cmdline and b"_torchrun" not in cmdline:  # not the launcher
                found.append(child)
    return sorted(found)


def test_sigkill_during_saves_never_exposes_a_broken_checkpoint(tmp_path, head_of_asset):
    """Kill a training process at many points inside checkpoint saves; every restart resumes."""
    ckpt_dir = tmp_path / "checkpoints"
    checkpointer = Checkpointer(ckpt_dir)
    flags = [
        "--step_scheduler.ckpt_every_steps=1",
        "--+checkpoint.keep_last_n=2",
        "--lr_scheduler.warmup_steps=1",
        f"--dataset.path={head_of_asset('reverse_train.jsonl', tmp_path / 'train.jsonl', 256)}",
        "--~validation_dataset",
    ]
    delays = [0.0, 0.002, 0.005, 0.01, 0.02]  # seconds after a save's staging folder appears
    seen_steps: list[int] = []
    for attempt, delay in enumerate(delays):
        restore = [] if attempt == 0 else ["--+checkpoint.restore_from=latest"]
        start_step = seen_steps[-1] if seen_steps else 0
        started = time.time()
        proc = _start(tmp_path, *flags, *restore)
        # Kill inside the second save of this process or later, so there is an earlier one.
        _wait_for(lambda t=started, s=start_step + 2: _saving_since(ckpt_dir, t, s), proc)
        time.sleep(delay)
        proc.kill()
        proc.communicate(timeout=60)
        latest = checkpointer.latest()
        assert latest is not None
        assert (ckpt_dir / "LATEST").read_text().strip() == latest.name
        info = read_checkpoint_info(latest)
        assert info.step > start_step
        state = _load_weights(latest)
        assert state and all(torch.isfinite(t).all() for t in state.values())
        seen_steps.append(info.step)
    assert seen_steps, "no checkpoint survived any attempt"
    # A last run resumes from what is left, cleans the partial folders and finishes normally.
    proc = _start(
        tmp_path,
        *flags,
        "--+checkpoint.restore_from=latest",
        "--step_scheduler.max_steps=" + str(seen_steps[-1] + 2),
    )
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    assert f"at step {seen_steps[-1]}" in err
    assert _staging(ckpt_dir) == []
    assert len(checkpointer.checkpoints()) == 2  # keep_last_n


def _staging(ckpt_dir: Path) -> list[str]:
    try:
        return sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith(".staging"))
    except FileNotFoundError:
        return []


def _saving_since(ckpt_dir: Path, since: float, min_step: int) -> bool:
    """Whether a save of step >= `min_step` started after `since` is writing its staging folder."""
    for name in _staging(ckpt_dir):
        try:
            step = int(name.rsplit("_step_", 1)[1].split("-")[0])
            if step >= min_step and (ckpt_dir / name).stat().st_mtime >= since:
                return True
        except (FileNotFoundError, IndexError, ValueError):  # published or cleaned meanwhile
            continue
    return False


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {
        k: v
        for f in sorted((path / "model").glob("*.safetensors"))
        for k, v in load_file(f).items()
    }
