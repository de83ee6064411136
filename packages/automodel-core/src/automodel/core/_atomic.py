"""Crash-safe file writes: write a hidden temporary sibling, fsync it, rename it into place.

automodel.checkpoint, automodel.core and automodel.peft each keep this small copy (no component
imports a sibling); tests/packaging/test_atomic_writes.py holds them to the same guarantees.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path


def _fsync(path: Path) -> None:
    """Flush a file's (or, best effort, a folder's) data to disk."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0))
    try:
        with contextlib.suppress(OSError):  # some platforms cannot fsync a folder
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)`, fsync tmp, rename it onto `path`, fsync the folder; return `path`.

    A reader sees the old file or the whole new one; after a crash, never an empty or partial
    file under the final name. A failed `write` leaves no temporary file behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return path
