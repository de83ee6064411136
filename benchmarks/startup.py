"""Start-up: time from launch to the first optimizer step of the default example, against the
time to import torch and transformers, alternated in the same run.

    uv run python benchmarks/startup.py                 # 5 rounds, about 2 minutes on 2 cores
    uv run python benchmarks/startup.py --rounds 9 --out benchmarks/results/startup.json

Each round starts two fresh processes, one after the other:

- **import**: `python -c "import torch, transformers; from transformers import
  AutoModelForCausalLM"`, the floor any trainer built on them pays;
- **first step**: `python -m automodel.cli finetune llm -c examples/llm_finetune/tiny_sft.yaml`
  for one step (output to a temporary folder), timed from the moment it is started to the
  `time` of the first row of its `training.jsonl`, which is written after the first optimizer
  step (so config checks, model and data set-up, the step-0 validation and the step itself
  count; the final checkpoint and shutdown do not).

It prints each figure's min / median / max and the ratio first step / import, round by round
(the machine's speed drifts; a ratio within a round does not).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples/llm_finetune/tiny_sft.yaml"
IMPORT = "import torch, transformers; from transformers import AutoModelForCausalLM"


def time_import() -> float:
    """Seconds for a fresh interpreter to import torch and transformers and exit."""
    start = time.time()
    subprocess.run([sys.executable, "-c", IMPORT], check=True)
    return time.time() - start


def time_first_step(work: Path) -> float:
    """Seconds from starting a one-step run of the default example to its first step's row."""
    run_dir = work / f"run_{time.monotonic_ns()}"
    command = [
        sys.executable, "-m", "automodel.cli", "finetune", "llm", "-c", str(EXAMPLE),
        "--step_scheduler.max_steps=1", f"--logging.run_dir={run_dir}",
        f"--checkpoint.checkpoint_dir={run_dir}/checkpoints", "--logging.progress=false",
    ]  # fmt: skip
    start = time.time()
    subprocess.run(command, check=True, cwd=REPO, capture_output=True)
    first = json.loads((run_dir / "training.jsonl").read_text().splitlines()[0])
    return first["time"] - start


def summary(values: list[float]) -> dict[str, float]:
    """Min, median and max."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write every round to this JSON file")
    args = parser.parse_args()
    imports, steps = [], []
    with tempfile.TemporaryDirectory() as tmp:
        time_import()  # warm the file cache once, uncounted
        for i in range(args.rounds):
            imports.append(time_import())
            steps.append(time_first_step(Path(tmp)))
            print(f"round {i + 1}: import {imports[-1]:.2f} s, first step {steps[-1]:.2f} s, "
                  f"ratio {steps[-1] / imports[-1]:.2f}", flush=True)  # fmt: skip
    ratios = [s / i for s, i in zip(steps, imports, strict=True)]
    result = {
        "import_torch_transformers_s": summary(imports),
        "first_step_s": summary(steps),
        "ratio": summary(ratios),
        "rounds": [{"import_s": i, "first_step_s": s} for i, s in zip(imports, steps, strict=True)],
    }
    print("| | min | median | max |\n|---|---|---|---|")
    for key, label in [
        ("import_torch_transformers_s", "import torch + transformers (s)"),
        ("first_step_s", "launch to first optimizer step (s)"),
        ("ratio", "ratio first step / import"),
    ]:
        row = result[key]
        print(f"| {label} | {row['min']:.2f} | {row['median']:.2f} | {row['max']:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
