"""Preemption and crash safety with a real `automodel` training process and real signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from automodel.checkpoint import Checkpointer, read_checkpoint_info

REPO = Path(__file__).resolve().parents[2]
SFT = REPO / "examples/llm_finetune/tiny_sft.yaml"
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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
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
