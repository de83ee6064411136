"""This process's memory as the OS sees it (Linux), shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import ctypes
import resource


def current_rss() -> int:
    """Resident set size of this process now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss() -> int:
    """The process's peak resident set size so far, in bytes (``ru_maxrss`` is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc), so an RSS baseline holds only live data."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
