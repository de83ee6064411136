"""Disk space around a save: a warning before a save that will not fit, and a full disk
reported as what it is instead of as the writer's error."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from pathlib import Path

from ._errors import CheckpointError

logger = logging.getLogger("automodel.checkpoint")

# What torch's zip writer and safetensors say when a write comes up short.
_SHORT_WRITE = ("no space left on device", "os error 28", "unexpected pos", "file write failed")


class DiskFullError(CheckpointError):
    """A checkpoint did not fit on its disk; the previous checkpoints are intact."""


def folder_bytes(path: Path) -> int:
    """Bytes of the files under `path` (0 if it is gone)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += (Path(root) / name).stat().st_size
    return total


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds `path` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def room_for_next(folder: Path, latest: Path | None, keep_last_n: int | None) -> bool:
    """False (warned) when the next save, as large as `latest`, will not fit in `folder`'s free
    space; also warns when every checkpoint is kept (`keep_last_n` unset) and few more fit."""
    if latest is None:
        return True
    needed, free = folder_bytes(latest), free_bytes(folder)
    if free < needed:
        remedy = (
            f"removing now the older checkpoints keep_last_n={keep_last_n} would remove after it"
            if keep_last_n is not None
            else "free some space, set keep_last_n, or save to a larger disk"
        )
        logger.warning(
            "the next checkpoint will likely not fit in %s: %s free, the last one (%s) took %s; %s",
            folder, _mib(free), latest.name, _mib(needed), remedy,
        )  # fmt: skip
        return False
    if keep_last_n is None and free < 3 * needed:
        logger.warning(
            "%s has room for %d more checkpoints of %s (%s free) and every checkpoint is kept "
            "(keep_last_n is unset): set keep_last_n before the disk fills",
            folder, free // max(needed, 1), _mib(needed), _mib(free),
        )  # fmt: skip
    return True


def _is_short_write(error: BaseException) -> bool:
    """True if `error` or an error it came from is a write that ran out of space."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(seen).lower() for text in _SHORT_WRITE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def disk_full_error(
    error: BaseException, staging: Path, final: Path, latest: Path | None, remove: bool
) -> DiskFullError | None:
    """A DiskFullError for `error` if it was a short write; with `remove` (one rank, once every
    rank stopped writing) the partial `staging` is removed so its space is free again."""
    if not _is_short_write(error):
        return None
    written = folder_bytes(staging)
    if remove:
        shutil.rmtree(staging, ignore_errors=True)
    needed = folder_bytes(latest) if latest is not None else 0
    newest = (
        f"The newest complete checkpoint is {latest} (LATEST); rerunning resumes from it."
        if latest is not None
        else "There is no complete checkpoint yet: a rerun starts from the beginning."
    )
    size = f"the last one took {_mib(needed)}" if latest is not None else "none was complete"
    return DiskFullError(
        f"checkpoint {final.name} did not fit: the disk of {final.parent} is full "
        f"({_mib(free_bytes(final.parent))} free after removing the {_mib(written)} "
        f"written; {size}). {newest} Free some space, keep fewer checkpoints (keep_last_n), "
        "or save to a larger disk."
    )
