"""The benchmark recipe's parts: its `benchmark:` section, synthetic batches, the profile window
and the summary statistics."""

from __future__ import annotations

import logging
import os
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from automodel.core.config import ConfigError, ConfigNode, Problem

from .._sections import read_section

log = logging.getLogger("automodel.recipes.llm")


@dataclass(frozen=True)
class Profile:
    """`benchmark.profile:` the steps traced by torch.profiler (and marked for nsys), inclusive."""

    start_step: int
    end_step: int


@dataclass(frozen=True)
class Benchmark:
    """`benchmark:` the synthetic rows, the steps left out of the summary, where it goes."""

    seq_length: int  # tokens per row
    warmup_steps: int = 2  # the first steps, left out of the summary
    peak_tflops: float | None = None  # per-device peak; null: by the GPU's name (none on CPU)
    summary_file: str | None = None  # default: <run_dir>/benchmark.json
    profile: Any = None  # {start_step, end_step} (a Profile once read) or null


def _count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def read_benchmark(cfg: ConfigNode) -> Benchmark:
    """The checked `benchmark:` section (with `step_scheduler.max_steps`), its window a Profile."""
    section = read_section(cfg, "benchmark", Benchmark)
    max_steps, problems = cfg.get("step_scheduler.max_steps"), []

    def problem(key: str, message: str) -> None:
        problems.append(Problem(key, message, cfg.where(key)))

    if not _count(max_steps, 1):
        message = (
            f"a benchmark runs a fixed number of steps: set an integer >= 1, got {max_steps!r}"
        )
        problem("step_scheduler.max_steps", message)
        max_steps = None
    if not _count(section.seq_length, 1):
        problem("benchmark.seq_length", f"expected an integer >= 1, got {section.seq_length!r}")
    warmup = section.warmup_steps
    if not _count(warmup, 0):
        problem("benchmark.warmup_steps", f"expected an integer >= 0, got {warmup!r}")
    elif max_steps is not None and warmup >= max_steps:
        message = f"{warmup} warm-up steps leave none of max_steps {max_steps} to measure"
        problem("benchmark.warmup_steps", message)
    peak = section.peak_tflops
    if peak is not None and (
        isinstance(peak, bool) or not isinstance(peak, int | float) or peak <= 0
    ):
        problem("benchmark.peak_tflops", f"expected TFLOP/s per device (> 0) or null, got {peak!r}")
    if section.summary_file is not None and not isinstance(section.summary_file, str):
        problem("benchmark.summary_file", f"expected a path or null, got {section.summary_file!r}")
    window = section.profile
    if window is not None:
        given = window if isinstance(window, dict) else {}
        start, end = given.get("start_step"), given.get("end_step")
        if sorted(given) != ["end_step", "start_step"]:
            message = f"expected {{start_step: N, end_step: M}} (inclusive) or null, got {window!r}"
            problem("benchmark.profile", message)
        elif not (_count(start, 1) and _count(end, start) and end <= (max_steps or end)):
            message = (
                f"expected 1 <= start_step <= end_step <= step_scheduler.max_steps ({max_steps}), "
                f"got start_step {start!r}, end_step {end!r}"
            )
            problem("benchmark.profile", message)
        else:
            window = Profile(start, end)
            measured = range(warmup + 1, max_steps + 1) if _count(warmup, 0) and max_steps else [0]
            if not set(measured) - set(range(start, end + 1)):
                message = (
                    f"profiled steps are not measured: with {warmup} warm-up step(s), steps "
                    f"{start}-{end} leave none of max_steps {max_steps}"
                )
                problem("benchmark.profile", message)
    if problems:
        raise ConfigError(problems)
    return replace(section, profile=window)


def synthetic_batches(vocab: int, rows: int, seq_len: int, seed: int) -> Iterator[dict]:
    """Endless micro-batches of random ids in [0, vocab) with labels = ids; fixed by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(0, vocab, (rows, seq_len), generator=generator)
        yield {"input_ids": ids, "labels": ids.clone()}


class ProfileWindow:
    """torch.profiler over the steps of a `Profile`, a Chrome trace per rank; on CUDA also the
    range that `nsys profile --capture-range=cudaProfilerApi` records, as an NVTX range."""

    def __init__(self, window: Profile | None, run_dir: Path, device: torch.device):
        self.window, self.cuda = window, device.type == "cuda"
        self.trace = run_dir / "profile" / f"trace_rank{os.environ.get('RANK', '0')}.json"
        self.profiler: Any = None

    def covers(self, step: int) -> bool:
        """Whether `step` is profiled (and so not measured)."""
        return self.window is not None and self.window.start_step <= step <= self.window.end_step

    def before(self, step: int) -> None:
        """Before a step's work: start at the window's first step."""
        if self.window is None or step != self.window.start_step:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities)
        self.profiler.start()
        if self.cuda:
            torch.cuda.profiler.start()
            torch.cuda.nvtx.range_push(f"benchmark steps {step}-{self.window.end_step}")

    def after(self, step: int) -> None:
        """After a step's work (synchronised): stop at the window's last step, write the trace."""
        if self.profiler is None or step != self.window.end_step:
            return
        if self.cuda:
            torch.cuda.nvtx.range_pop()
            torch.cuda.profiler.stop()
        self.profiler.stop()
        self.trace.parent.mkdir(parents=True, exist_ok=True)
        self.profiler.export_chrome_trace(str(self.trace))
        self.profiler = None
        log.info("profile of steps %d-%d: %s", self.window.start_step, step, self.trace)


def stats(values: list[float]) -> dict[str, float]:
    """Median, mean, min and max."""
    return {
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }
