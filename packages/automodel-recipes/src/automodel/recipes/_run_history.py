"""Where a run starts: its newest checkpoint by default; a new start moves the earlier run aside.

Rerunning a command (by hand, or a requeued SLURM job) continues the run. Starting over, or
branching from an older checkpoint, is asked for with `checkpoint.restore_from`, and then the
earlier run's checkpoints and logs move to `previous/<time>/` beside where they were: nothing
is deleted or overwritten.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from automodel.checkpoint import Checkpointer, parse_checkpoint_dir_name
from automodel.core.config import ConfigError, Problem, UserError
from automodel.distributed import barrier, is_main_process

log = logging.getLogger("automodel.recipes")

LATEST = "latest"  # the newest complete checkpoint, else step 0 (the default; null means it too)
FRESH = "fresh"  # step 0; an earlier run in the directory is moved aside
PREVIOUS_DIR = "previous"
RUN_FILES = ("training.jsonl", "validation.jsonl", "merged_model")  # a run's own outputs
# Set (> 0) when the scheduler or torchrun restarted the job: a rerun, never a new start.
RESTART_COUNTS = ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")


def start_point(
    checkpointer: Checkpointer,
    restore_from: str | None,
    run_dir: Path,
    group: Any = None,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """The checkpoint to resume (None: step 0), once rank 0 has moved aside what of an earlier
    run the new start would overwrite. Every rank of `group` (default: all) calls it (it ends
    with a barrier)."""
    environ = os.environ if environ is None else environ
    restarted = [
        f"{n}={environ[n]}" for n in RESTART_COUNTS if environ.get(n, "0") not in ("", "0")
    ]
    if restore_from not in (None, LATEST) and restarted:
        log.info(
            "%s: a restarted job resumes its newest checkpoint; checkpoint.restore_from: %s "
            "applied to its first start",
            ", ".join(restarted), restore_from,
        )  # fmt: skip
        restore_from = LATEST
    resume, after_step = _decide(checkpointer, restore_from)
    if is_main_process():
        try:
            _set_aside(checkpointer, run_dir, after_step, resume)
        except OSError as e:
            raise UserError(
                f"cannot move the earlier run in {run_dir} aside ({e}); nothing was deleted. "
                "Fix the permissions, or choose another logging.run_dir"
            ) from e
    barrier(group)
    return resume


def _decide(checkpointer: Checkpointer, restore_from: str | None) -> tuple[Path | None, int | None]:
    """(checkpoint to resume, step after which this folder's checkpoints move aside; -1: all)."""
    if restore_from in (None, LATEST):
        latest = checkpointer.latest()
        if latest is None:
            log.info("no checkpoint in %s yet: starting at step 0", checkpointer.checkpoint_dir)
            return None, -1  # logs of an attempt that never saved move aside
        return latest, None
    if restore_from == FRESH:
        return None, -1
    path = Path(restore_from)
    parsed = parse_checkpoint_dir_name(path.name)
    if not path.is_dir() or parsed is None:
        raise ConfigError(
            Problem(
                "checkpoint.restore_from",
                f"{path} is not a checkpoint folder; use `{LATEST}` (the default), `{FRESH}` "
                "to start over, or a path to an epoch_<e>_step_<s> checkpoint",
            )
        )
    if path.parent.resolve() == checkpointer.checkpoint_dir.resolve():
        return path, parsed[1]  # a branch: the checkpoints after it move aside
    return path, -1  # another run's checkpoint: this folder's run moves aside


def _set_aside(
    checkpointer: Checkpointer, run_dir: Path, after_step: int | None, resume: Path | None
) -> None:
    """Move what a start at `resume` would overwrite to `previous/<time>/` beside it."""
    if after_step is None:
        return  # resuming the newest checkpoint: the logs are cut back to it, as on any resume
    root = checkpointer.checkpoint_dir
    logs = [run_dir / name for name in RUN_FILES if _holds_data(run_dir / name)]
    if after_step >= 0:  # a branch: later checkpoints move, the logs are copied (then cut back)
        stamp = _stamp([root.parent, run_dir])
        later = checkpointer.set_aside(_aside(root, stamp), after_step)
        if later:
            for path in logs:
                copy = _aside(path, stamp)
                copy.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, copy)
            log.warning(
                "branching from %s: the later checkpoint(s) %s moved to %s, with a copy of "
                "the logs", resume, ", ".join(p.name for p in later), _aside(root, stamp),
            )  # fmt: skip
        return
    moving = logs + ([root] if root.is_dir() and any(root.iterdir()) else [])
    if not moving:
        return
    stamp = _stamp([root.parent, run_dir])
    checkpointer.set_aside(_aside(root, stamp))
    _move_aside(logs, stamp)
    log.warning(
        "starting %s: the earlier run's %s moved to %s",
        "at step 0" if resume is None else f"from {resume}",
        ", ".join(p.name for p in moving),
        " and ".join(sorted({str(_aside(p, stamp).parent) for p in moving})),
    )


def set_aside_outputs(run_dir: Path, names: tuple[str, ...]) -> Path | None:
    """Move the earlier run's outputs `names` in `run_dir` to `previous/<time>/` (rank 0; every
    rank calls it, it ends with a barrier): for a recipe that resumes nothing and starts each
    run afresh (benchmark). Returns where they went (on rank 0), None when nothing moved."""
    moved = None
    if is_main_process():
        paths = [run_dir / name for name in names if _holds_data(run_dir / name)]
        if paths:
            stamp = _stamp([run_dir])
            _move_aside(paths, stamp)
            moved = run_dir / PREVIOUS_DIR / stamp
            log.warning("the earlier run's %s moved to %s", ", ".join(p.name for p in paths), moved)
    barrier()
    return moved


def _holds_data(path: Path) -> bool:
    return path.is_dir() or (path.is_file() and path.stat().st_size > 0)


def _move_aside(paths: list[Path], stamp: str) -> None:
    """Rename each of `paths` to `previous/<stamp>/` beside it (one rename each: never half moved)."""
    for path in paths:
        _aside(path, stamp).parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, _aside(path, stamp))


def _aside(path: Path, stamp: str) -> Path:
    """Where `path` goes when its run is set aside: `previous/<stamp>/` beside it."""
    return path.parent / PREVIOUS_DIR / stamp / path.name


def _stamp(parents: list[Path]) -> str:
    """A UTC time stamp that names no existing `previous/` entry under any of `parents`."""
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    stamp, n = base, 1
    while any((p / PREVIOUS_DIR / stamp).exists() for p in parents):
        n += 1
        stamp = f"{base}-{n}"
    return stamp
