"""Start-up: time from launch to the first optimizer step of the default example, against the
time to import torch and transformers, alternated in the same run.

    uv run python benchmarks/startup.py                 # 5 rounds, about 2 minutes on 2 cores
    uv run python benchmarks/startup.py --rounds 9 --out benchmarks/results/startup.json

Each round starts three fresh processes, one after the other, and times each from the moment
it is started to a moment it reports (so Python's teardown at exit, which takes over a second
once torch is loaded, counts in none of them):

- **import**: `import torch, transformers; from transformers import AutoModelForCausalLM`,
  the floor the issue measures against;
- **model**: the same, then the example's tiny Llama built with
  `AutoModelForCausalLM.from_config`, which imports `transformers.modeling_utils` (and with it
  `torch._dynamo`, DTensor and any installed quantization library): what every trainer that
  builds a transformers model pays before doing anything of its own;
- **first step**: `python -m automodel.cli finetune llm -c examples/llm_finetune/tiny_sft.yaml`
  for one step (output to a temporary folder), to the `time` of the first row of its
  `training.jsonl`, written after the first optimizer step (so config checks, model and data
  set-up, the step-0 validation and the step itself count; the final checkpoint does not).
  The whole run, launch to exit, is reported beside it.

It prints each figure's min / median / max and the ratios first step / import and
first step / model, round by round (the machine's speed drifts; a ratio within a round does not).
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
MODEL = (
    f"{IMPORT}; from transformers import AutoConfig; AutoModelForCausalLM.from_config("
    f"AutoConfig.from_pretrained({str(REPO / 'examples/llm_finetune/assets/tiny_llama')!r}))"
)


def time_to_done(code: str) -> float:
    """Seconds from starting a fresh interpreter on `code` to the moment the code has run."""
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-c", f"{code}; import time; print(time.time())"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return float(out.stdout.split()[-1]) - start


def time_first_step(work: Path) -> tuple[float, float]:
    """Seconds from starting a one-step run of the default example to its first step's row,
    and to the process's exit."""
    run_dir = work / f"run_{time.monotonic_ns()}"
    command = [
        sys.executable, "-m", "automodel.cli", "finetune", "llm", "-c", str(EXAMPLE),
        "--step_scheduler.max_steps=1", f"--logging.run_dir={run_dir}",
        f"--checkpoint.checkpoint_dir={run_dir}/checkpoints", "--logging.progress=false",
    ]  # fmt: skip
    start = time.time()
    subprocess.run(command, check=True, cwd=REPO, capture_output=True)
    end = time.time()
    first = json.loads((run_dir / "training.jsonl").read_text().splitlines()[0])
    return first["time"] - start, end - start


def summary(values: list[float]) -> dict[str, float]:
    """Min, median and max."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


FIGURES = [
    ("import_s", "import torch + transformers (s)"),
    ("model_s", "import + build the tiny model with transformers (s)"),
    ("first_step_s", "launch to first optimizer step (s)"),
    ("whole_run_s", "whole 1-step run, launch to exit (s)"),
    ("ratio_import", "ratio first step / import"),
    ("ratio_model", "ratio first step / model"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write every round to this JSON file")
    args = parser.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        time_to_done(MODEL)  # warm the file cache once, uncounted
        for i in range(args.rounds):
            row = {"import_s": time_to_done(IMPORT), "model_s": time_to_done(MODEL)}
            row["first_step_s"], row["whole_run_s"] = time_first_step(Path(tmp))
            row["ratio_import"] = row["first_step_s"] / row["import_s"]
            row["ratio_model"] = row["first_step_s"] / row["model_s"]
            rounds.append(row)
            print(
                f"round {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True
            )
    result = {key: summary([r[key] for r in rounds]) for key, _ in FIGURES}
    result["rounds"] = rounds
    print("| | min | median | max |\n|---|---|---|---|")
    for key, label in FIGURES:
        row = result[key]
        print(f"| {label} | {row['min']:.2f} | {row['median']:.2f} | {row['max']:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
