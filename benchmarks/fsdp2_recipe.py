"""Tokens/s per GPU and MFU of the finetune.llm recipe with FSDP2 and bf16 on a Llama-3.2-1B shape.

Run by hand on CUDA machines (not part of the tests):

    uv run python benchmarks/fsdp2_recipe.py                       # every visible GPU
    uv run python benchmarks/fsdp2_recipe.py --nproc-per-node 8 --local-batch-size 4 \
        --out benchmarks/results/fsdp2_recipe.json
    uv run python benchmarks/fsdp2_recipe.py --smoke               # tiny shape on CPU, checks wiring

It runs the real CLI (`automodel finetune llm -c examples/llm_finetune/tiny_sft.yaml`) with
overrides: the model is built from the tiny example's config with the Llama-3.2-1B shape
(hidden 2048, 16 layers, 32 heads / 8 KV heads, MLP 8192, vocabulary 128256, tied
embeddings; random weights, nothing downloaded), FSDP2 with bf16 parameters in compute and
float32 gradient reduction, and the example's chat data packed into rows of `--seq-len`
tokens. No validation and no checkpoint. Tokens/s per GPU and MFU are the recipe's own
`training.jsonl` metrics (real tokens; dense-decoder FLOPs per token including attention;
the GPU's dense bf16 peak from automodel.core.training); the report is the median over the
steps after `--warmup`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples/llm_finetune/tiny_sft.yaml"
LLAMA_3_2_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
}
SMOKE = {  # a few seconds on a CPU: checks the wiring, measures nothing
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
    "max_position_embeddings": 2048,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc-per-node", type=int, help="GPUs to use (default: all visible)")
    parser.add_argument("--local-batch-size", type=int, default=4, help="packed rows per GPU")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the median")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--reshard-after-forward", choices=("true", "false"), default="true")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU (no figures)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    parser.add_argument("--out", help="also write the results to this JSON file")
    return parser.parse_args(argv)


def command(args: argparse.Namespace, run_dir: Path, nproc: int) -> list[str]:
    """The CLI invocation: the tiny example turned into a 1B-shaped FSDP2 bf16 run."""
    shape = SMOKE if args.smoke else LLAMA_3_2_1B
    global_batch = args.local_batch_size * nproc
    overrides = [
        f"--step_scheduler.global_batch_size={global_batch}",
        f"--step_scheduler.local_batch_size={args.local_batch_size}",
        f"--step_scheduler.max_steps={args.steps}",
        "--step_scheduler.val_every_steps=null",
        "--step_scheduler.ckpt_every_steps=null",
        "--step_scheduler.log_every_steps=1",
        "--~validation_dataset",
        "--+checkpoint.save_final=false",
        f"--+packed_sequence.packed_sequence_size={args.seq_len}",
        "--lr_scheduler.warmup_steps=1",
        f"--logging.run_dir={run_dir}",
        f"--checkpoint.checkpoint_dir={run_dir}/checkpoints",
        "--+logging.progress=false",
        "--+distributed.strategy=fsdp2",
        "--+distributed.mp_param_dtype=bfloat16",
        f"--+distributed.reshard_after_forward={args.reshard_after_forward}",
        f"--+distributed.activation_checkpointing={str(args.activation_checkpointing).lower()}",
        *(f"--+model.{key}={value}" for key, value in shape.items()),
    ]
    if args.smoke:
        overrides.append("--+distributed.device=cpu")
    automodel = Path(sys.executable).with_name("automodel")
    launch = ["--nproc-per-node", str(nproc)] if nproc > 1 else []
    return [str(automodel), "finetune", "llm", "-c", str(CONFIG), *launch, *overrides]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            print(
                "this benchmark needs CUDA GPUs; --smoke runs a tiny shape on CPU", file=sys.stderr
            )
            return 2
        nproc = args.nproc_per_node or torch.cuda.device_count()
        gpu = torch.cuda.get_device_name()
    else:
        nproc, gpu = args.nproc_per_node or 1, "cpu (smoke)"
    if args.steps <= args.warmup:
        print(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})", file=sys.stderr)
        return 2
    run_dir = Path(tempfile.mkdtemp(prefix="fsdp2_recipe_"))
    try:
        cmd = command(args, run_dir, nproc)
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-6000:], file=sys.stderr)
            return proc.returncode
        rows = [json.loads(line) for line in (run_dir / "training.jsonl").read_text().splitlines()]
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    measured = rows[args.warmup :]
    mfus = [r["mfu"] for r in measured if r.get("mfu") is not None]
    result = {
        "gpu": gpu,
        "nproc_per_node": nproc,
        "shape": "smoke" if args.smoke else "llama-3.2-1b",
        "seq_len": args.seq_len,
        "local_batch_size": args.local_batch_size,
        "activation_checkpointing": args.activation_checkpointing,
        "reshard_after_forward": args.reshard_after_forward == "true",
        "steps_measured": len(measured),
        "tokens_per_s_per_gpu": statistics.median(r["tps_per_gpu"] for r in measured),
        "mfu": statistics.median(mfus) if mfus else None,
        "peak_memory_gib": max(r["mem"] for r in measured),
        "loss_first_last": [rows[0]["loss"], rows[-1]["loss"]],
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
