"""Throughput measured from outside the process: the whole-run wall time of a long and a short
run of the same configuration, whose difference is the time of the extra steps alone.

Start-up (imports, model build, tokenization) and shutdown cancel out; everything a step costs
inside the process (data loading, collation, logging, host waits) stays in. No stamp inside
the trainer is trusted: only `time.perf_counter()` around `subprocess.run` and the real tokens
each step consumed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import _trainer_compare as compare


def run_outside(
    script: str,
    args: argparse.Namespace,
    spec_path: Path,
    work: Path,
    short: int,
    long_runs: dict[str, list[dict]],
) -> dict[str, dict]:
    """Each run of `long_runs` (`run_alternated`'s, at the spec's steps) again at `short` steps,
    as many times, interleaved; each run's real tokens/s over the extra steps, per repeat (the
    n-th short run against the n-th long one) and their median."""
    spec = json.loads(spec_path.read_text())
    long = spec["steps"]
    if not 0 < short < long:
        raise SystemExit(f"--outside {short}: must be between 0 and --steps ({long})")
    short_spec = work / "spec_short.json"
    short_spec.write_text(json.dumps({**spec, "steps": short}))
    short_runs: dict[str, list[dict]] = {name: [] for name in long_runs}
    for rep in range(args.repeats):
        for name in long_runs:
            tag = f"{name}.{rep}.short"
            print(f"outside clock: {name} at {short} steps (repeat {rep + 1}) ...", flush=True)
            result = compare.run_child(
                script, name, short_spec, work / f"{tag}.result.json", work / f"{tag}.log"
            )
            short_runs[name].append(result)
    out: dict[str, dict] = {}
    for name, fulls in long_runs.items():
        rates, extra_s = [], []
        for full, part in zip(fulls, short_runs[name], strict=True):
            seconds = full["process_wall_s"] - part["process_wall_s"]
            rates.append(sum(full["step_real_tokens"][short:long]) / seconds)
            extra_s.append(seconds)
        out[name] = {
            "outside_tokens_per_s": rates,
            "outside_median_tokens_per_s": statistics.median(rates),
            "outside_best_tokens_per_s": max(rates),
            "outside_extra_steps": long - short,
            "outside_extra_s": extra_s,
            "load_avg_end": os.getloadavg(),
        }
    return out


def print_outside(results: dict[str, dict], base_run: str = "hf") -> None:
    """A table: real tokens/s over the extra steps, best and median, and x the base run."""
    base = results.get(base_run)
    print("\noutside wall clock (whole-run difference of two step counts, start-up cancelled):")
    print(f"{'run':<12} {'best tok/s':>11} {'x hf':>6} {'median':>9} {'x hf':>6}  per repeat")
    for name, r in results.items():
        best, median = r["outside_best_tokens_per_s"], r["outside_median_tokens_per_s"]
        x_best = f"{best / base['outside_best_tokens_per_s']:.2f}" if base else "-"
        x_med = f"{median / base['outside_median_tokens_per_s']:.2f}" if base else "-"
        each = ", ".join(f"{v:.0f}" for v in r["outside_tokens_per_s"])
        print(f"{name:<12} {best:>11.0f} {x_best:>6} {median:>9.0f} {x_med:>6}  {each}")
