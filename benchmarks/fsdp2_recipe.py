"""Tokens/s per GPU and MFU with FSDP2 and bf16 on a Llama-3.2-1B shape: `automodel benchmark llm`.

Run by hand on CUDA machines (not part of the tests):

    uv run python benchmarks/fsdp2_recipe.py                       # every visible GPU
    uv run python benchmarks/fsdp2_recipe.py --nproc-per-node 8 --local-batch-size 4 \\
        --out benchmarks/results/fsdp2_recipe.json
    uv run python benchmarks/fsdp2_recipe.py --smoke               # tiny shape on CPU, checks wiring

A thin caller of the benchmark recipe with examples/llm_benchmark/llama3_2_1b.yaml (a randomly
initialised Llama-3.2-1B shape, FSDP2 with bf16 compute and float32 gradient reduction, the fused
linear cross-entropy, synthetic tokens; nothing is downloaded or saved). The flags become
overrides: rows of `--seq-len` tokens, `--local-batch-size` rows per GPU per micro-batch and
`--grad-acc` micro-batches per step (default 1: global batch = local batch x GPUs). The recipe
measures (warm-up left out, synchronised step times, dense bf16 peak of the GPU by name) and
writes its summary; this script prints the main figures, and with `--out` writes the whole
summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples/llm_benchmark/llama3_2_1b.yaml"
SMOKE = {  # a few seconds on a CPU: checks the wiring, measures nothing
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc-per-node", type=int, help="GPUs to use (default: all visible)")
    parser.add_argument("--local-batch-size", type=int, default=4, help="rows per GPU at a time")
    parser.add_argument("--grad-acc", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the summary")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--reshard-after-forward", choices=("true", "false"), default="true")
    parser.add_argument("--profile", type=int, nargs=2, metavar=("START", "END"),
                        help="trace steps START..END (torch.profiler; nsys range on CUDA)")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU (no figures)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    parser.add_argument("--out", help="also write the recipe's summary to this JSON file")
    return parser.parse_args(argv)


def overrides(args: argparse.Namespace, run_dir: Path, nproc: int) -> list[str]:
    """The flags as overrides of the benchmark recipe's config (also used by gpu_suite.py)."""
    profile = "null"
    if args.profile:
        profile = f"{{start_step: {args.profile[0]}, end_step: {args.profile[1]}}}"
    out = [
        f"--benchmark.seq_length={args.seq_len}",
        f"--benchmark.warmup_steps={args.warmup}",
        f"--benchmark.profile={profile}",
        f"--step_scheduler.global_batch_size={args.local_batch_size * nproc * args.grad_acc}",
        f"--step_scheduler.local_batch_size={args.local_batch_size}",
        f"--step_scheduler.max_steps={args.steps}",
        "--step_scheduler.log_every_steps=1",
        f"--logging.run_dir={run_dir}",
        "--+logging.progress=false",
        f"--+distributed.reshard_after_forward={args.reshard_after_forward}",
        f"--+distributed.activation_checkpointing={str(args.activation_checkpointing).lower()}",
    ]
    if args.smoke:
        out += [f"--+model.{key}={value}" for key, value in SMOKE.items()]
        out.append("--+distributed.device=cpu")
    return out


def command(args: argparse.Namespace, run_dir: Path, nproc: int) -> list[str]:
    """`automodel benchmark llm -c llama3_2_1b.yaml` with the flags as overrides."""
    automodel = Path(sys.executable).with_name("automodel")
    launch = ["--nproc-per-node", str(nproc)] if nproc > 1 else []
    config = ["-c", str(CONFIG), *launch, *overrides(args, run_dir, nproc)]
    return [str(automodel), "benchmark", "llm", *config]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        nproc = args.nproc_per_node or 1
    else:
        import torch

        if not torch.cuda.is_available():
            print(
                "this benchmark needs CUDA GPUs; --smoke runs a tiny shape on CPU", file=sys.stderr
            )
            return 2
        nproc = args.nproc_per_node or torch.cuda.device_count()
    run_dir = Path(tempfile.mkdtemp(prefix="fsdp2_recipe_"))
    try:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run(
            command(args, run_dir, nproc), cwd=REPO, env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:  # a config mistake (exit 2) names the flag's key
            print(proc.stderr[-6000:], file=sys.stderr)
            return proc.returncode
        summary = json.loads((run_dir / "benchmark.json").read_text())
    finally:
        if args.keep:
            print(f"run directory: {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    summary = {"shape": "smoke" if args.smoke else "llama-3.2-1b", **summary}
    median = {key: (summary[key] or {}).get("median") for key in ("tokens_per_s_per_gpu", "mfu")}
    brief = {
        key: summary[key]
        for key in ("device", "shape", "world_size", "seq_length", "local_batch_size")
    }
    print(json.dumps({**brief, **median, "peak_memory_gib": summary["peak_memory_gib"]}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
