"""This process's memory as the OS sees it (Linux) and as torch.profiler sees it, shared by
the benchmark scripts."""

from __future__ import annotations

import contextlib
import ctypes
import json
import resource
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def profile_step(step: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``step()`` under torch.profiler; return the profiler and the peak of live tensor bytes.

    The peak is the running sum of the CPU allocator's allocation and free events
    (``profile_memory=True``) over the tensors live at the start: exact, and free of the heap
    allocator's fragmentation.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    allocations = sorted(
        (e["ts"], e["args"].get("Ev Idx", 0), e["args"]["Bytes"])
        for e in events
        if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0
    )
    live = peak = 0
    for _, _, nbytes in allocations:
        live += nbytes
        peak = max(peak, live)
    return prof, peak
