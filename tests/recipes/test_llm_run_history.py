"""Rerunning a command resumes; starting over or branching moves the earlier run aside, never
deleting or overwriting it (`checkpoint.restore_from`: latest, fresh or a path)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from _shared import SFT

from automodel.cli import main as automodel


def _files(root: Path) -> dict[str, str]:
    """Every file under `root` (but `previous/`) with a hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "previous" not in p.relative_to(root).parts
    }


def _previous(run_dir: Path) -> list[Path]:
    root = run_dir / "previous"
    return sorted(root.iterdir()) if root.is_dir() else []


@pytest.fixture
def train(short_run, small_data, monkeypatch_module, capsys):
    """`train(run_dir, *extra)`: 4 steps, a checkpoint every 2, in this process; (code, stderr)."""

    def run(run_dir: Path, *extra: str) -> tuple[int, str]:
        code = automodel(
            ["finetune", "llm", "-c", str(SFT), *short_run(run_dir, small_data, 4, 2, *extra)]
        )
        return code, capsys.readouterr().err

    return run


def test_rerun_resumes_a_restart_never_starts_over_and_a_branch_keeps_the_old_line(
    train, jsonl_rows, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    assert train(run)[0] == 0
    first = _files(run)
    rows = jsonl_rows(run / "training.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]

    code, err = train(run)  # the identical command: the run is complete
    assert code == 0 and "the run is complete at step 4" in err
    assert _files(run) == first and _previous(run) == []

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a requeued job resumes, whatever it says
    code, err = train(run, "--+checkpoint.restore_from=fresh")
    assert code == 0 and "SLURM_RESTART_COUNT=1: a restarted job resumes" in err
    assert _files(run) == first and _previous(run) == []
    monkeypatch.delenv("SLURM_RESTART_COUNT")

    (step_2,) = (run / "checkpoints").glob("epoch_*_step_2")
    code, err = train(run, f"--+checkpoint.restore_from={step_2}")
    assert code == 0 and f"branching from {step_2}" in err
    (aside,) = _previous(run)
    later = {k for k in first if k.startswith("checkpoints/") and "_step_4/" in k}
    moved = {k: v for k, v in _files(aside).items() if "_step_" in k}
    assert later and moved == {k: first[k] for k in later}  # the old step 4, byte for byte
    for name in ("training.jsonl", "validation.jsonl"):  # the old line's logs, whole
        assert hashlib.sha256((aside / name).read_bytes()).hexdigest() == first[name]
    assert jsonl_rows(run / "training.jsonl") == rows  # exact resume from the branch point
    assert (run / "checkpoints" / "LATEST").read_text().split()[0].endswith("_step_4")
    (newest,) = (run / "checkpoints").glob("epoch_*_step_4")
    code, err = train(run, f"--+checkpoint.restore_from={newest}")  # naming the newest: a resume
    assert code == 0 and "the run is complete at step 4" in err
    assert len(_previous(run)) == 1


def test_fresh_moves_the_earlier_run_aside_and_a_run_that_never_saved_keeps_its_logs(
    train, jsonl_rows, tmp_path
):
    run = tmp_path / "run"
    assert train(run)[0] == 0
    first = _files(run)
    code, err = train(run, "--+checkpoint.restore_from=fresh")
    assert code == 0 and "starting at step 0: the earlier run's" in err
    (aside,) = _previous(run)
    assert _files(aside) == first  # moved whole: checkpoints and logs, byte for byte
    assert _files(run).keys() == first.keys()
    assert jsonl_rows(run / "training.jsonl") == jsonl_rows(aside / "training.jsonl")

    stray = tmp_path / "stray"  # an attempt killed before its first checkpoint
    stray.mkdir()
    (stray / "training.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    assert train(stray)[0] == 0
    (aside,) = _previous(stray)
    assert (aside / "training.jsonl").read_text() == '{"step": 1, "loss": 9.0}\n'
    assert [r["step"] for r in jsonl_rows(stray / "training.jsonl")] == [1, 2, 3, 4]

    code, err = train(run, f"--+checkpoint.restore_from={tmp_path / 'nowhere'}")
    assert code == 2 and "checkpoint.restore_from: " in err and "is not a checkpoint folder" in err
    assert len(_previous(run)) == 1  # a bad request moves nothing
