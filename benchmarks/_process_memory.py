"""This process's memory as the OS sees it (Linux) and as torch.profiler sees it, shared by
the benchmark scripts."""

from __future__ import annotations

import contextlib
import ctypes
import json
import resource
import tempfile
import time
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


def measure_step(device_type: str, step: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``step()`` once; return its result and its peak bytes, wall and CPU seconds.

    On CPU the peak is the process's maximum resident set size (``ru_maxrss``) minus its RSS
    before the step, and it is an error if the step did not raise the earlier high-water mark
    (the maximum would then say nothing about the step); on CUDA it is
    ``torch.cuda.max_memory_allocated`` over the memory allocated before the step.
    """
    import torch

    if device_type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline, high_water = current_rss(), peak_rss()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = step()
    if device_type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        peak = peak_rss() - baseline
        if peak + baseline <= high_water:
            raise RuntimeError("the measured step did not exceed the earlier RSS high-water mark")
    return result, {
        "peak_bytes": peak,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
    }


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
