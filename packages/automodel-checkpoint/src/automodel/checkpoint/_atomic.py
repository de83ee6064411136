"""Crash-safe file writes: write to a temporary name, fsync, then rename into place."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file or directory's data to disk (directories: best effort)."""
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        if path.is_dir():
            return  # some platforms cannot open directories
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


_TEMP_MARK = ".tmp-"


def temp_path_for(path: Path) -> Path:
    """A hidden temporary sibling of ``path``, unique to this process."""
    return path.with_name(f".{path.name}{_TEMP_MARK}{os.getpid()}")


def is_temp_path(path: Path) -> bool:
    """Whether ``path`` is a temporary file of `atomic_write` (left behind if it was killed)."""
    _, mark, pid = path.name.rpartition(_TEMP_MARK)
    return path.name.startswith(".") and bool(mark) and pid.isdigit()


@contextlib.contextmanager
def _cleanup_on_error(tmp: Path) -> Iterator[None]:
    """Remove ``tmp`` if the block raises."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` then fsync and ``os.replace`` tmp onto ``path``; return ``path``."""
    path = Path(path)
    tmp = temp_path_for(path)
    with _cleanup_on_error(tmp):
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    fsync_path(path.parent)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
