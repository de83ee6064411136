"""Forward+backward time of one MoE layer: automodel.moe vs the Hugging Face reference.

Run by hand (not part of the tests):

    uv run python benchmarks/moe_layer.py                      # CPU, float32, ~3 min on 2 cores
    uv run python benchmarks/moe_layer.py --repeats 5 --out benchmarks/results/moe_layer.json
    uv run python benchmarks/moe_layer.py --device cuda --dtype bfloat16

The layer is transformers' `Qwen3MoeSparseMoeBlock` (64 experts, top-8, hidden 1024, expert
intermediate 512, no shared expert) with random weights (router N(0, 0.02) so routing is
roughly balanced), on 4096 tokens. Variants, all in this one process on the same weights:

- `hf_eager`: the block with `experts_implementation="eager"`, the per-expert loop (the
  reference the issue compares against);
- `hf_grouped_mm`: the same block with transformers' own `"grouped_mm"` implementation
  (its v5 default), for context;
- `ours`: the block after `automodel.moe.patch_hf_moe` (backend "auto": `torch._grouped_mm`
  on CPU and, for bf16, on CUDA);
- `ours_loop`: ours with `backend="loop"`, the fallback (per-expert row slices under one
  autograd node).

One step is `y = block(x)` and `y.backward(dy)` (gradients w.r.t. the input and every
weight). After warm-up steps, the variants run in rounds, with the order reversed every
round, so load from other processes on a shared machine spreads over all of them; the table
shows the median wall-clock time and process CPU time per step, and the median over rounds
of the per-round time ratio hf / ours. Before timing, outputs and gradients are checked
against `hf_eager`. TFLOP/s counts the expert and router matmuls (forward 2 FLOPs per
multiply-add, backward twice the forward).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import sys
import time
from typing import Any

import torch
from torch import nn

VARIANTS = ("ours", "ours_loop", "hf_eager", "hf_grouped_mm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> dict[str, nn.Module]:
    """The three variants of the layer, sharing the same initial weights."""
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    from automodel.moe import patch_hf_moe

    config = Qwen3MoeConfig(
        hidden_size=args.hidden,
        moe_intermediate_size=args.intermediate,
        num_experts=args.experts,
        num_experts_per_tok=args.top_k,
        norm_topk_prob=True,
    )
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    block = Qwen3MoeSparseMoeBlock(config)
    with torch.no_grad():
        block.gate.weight.normal_(0, 0.02)
        for w in (block.experts.gate_up_proj, block.experts.down_proj):
            w.normal_(0, w.shape[-1] ** -0.5)
    block = block.to(args.device, dtype)
    variants: dict[str, nn.Module] = {}
    for name in args.variants:
        holder = nn.Module()
        holder.mlp = copy.deepcopy(block)
        if name.startswith("ours"):
            patch_hf_moe(holder, backend="loop" if name == "ours_loop" else "auto")
        else:
            impl = "eager" if name == "hf_eager" else "grouped_mm"
            holder.mlp.experts.config = copy.copy(config)
            holder.mlp.experts.config._experts_implementation = impl
        variants[name] = holder.mlp.train()
    return variants


def step(block: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One forward + backward; returns the output and the gradients (input, then weights)."""
    block.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    y = block(x)
    y.backward(dy)
    return (y.detach(), x.grad, *(p.grad for _, p in sorted(block.named_parameters())))


def sync(device: str) -> None:
    """Wait for queued device work."""
    if device == "cuda":
        torch.cuda.synchronize()


def timed(block: nn.Module, x: torch.Tensor, dy: torch.Tensor, device: str) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one step."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    step(block, x, dy)
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def flops(args: argparse.Namespace) -> float:
    """Matmul FLOPs of one forward + backward (experts + router)."""
    rows = args.tokens * args.top_k
    expert = 2 * rows * (args.hidden * 2 * args.intermediate + args.intermediate * args.hidden)
    router = 2 * args.tokens * args.hidden * args.experts
    return 3.0 * (expert + router)


def check(variants: dict[str, nn.Module], x: torch.Tensor, dy: torch.Tensor) -> dict[str, float]:
    """Largest relative difference of each variant's output/gradients from the first one's."""
    results = {name: step(block, x, dy) for name, block in variants.items()}
    ref_name = "hf_eager" if "hf_eager" in results else next(iter(results))
    ref = results[ref_name]
    diffs = {}
    for name, res in results.items():
        worst = 0.0
        for a, b in zip(res, ref, strict=True):
            scale = b.float().abs().max().clamp_min(1e-12)
            worst = max(worst, float((a.float() - b.float()).abs().max() / scale))
        diffs[name] = worst
    return diffs


def main(argv: list[str] | None = None) -> None:
    """Build, check, time and report."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = build(args)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, args.tokens, args.hidden, generator=gen).to(args.device, dtype)
    dy = torch.randn(1, args.tokens, args.hidden, generator=gen).to(args.device, dtype)
    diffs = check(variants, x, dy)
    print("max relative difference from the reference:", diffs, flush=True)
    for _ in range(args.warmup):
        for block in variants.values():
            step(block, x, dy)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    order = list(variants)
    for r in range(args.repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            times[name].append(timed(variants[name], x, dy, args.device))
            print(f"round {r} {name}: {times[name][-1][0]:.3f} s", flush=True)
    total_flops = flops(args)
    rows: dict[str, dict[str, Any]] = {}
    for name, samples in times.items():
        wall = statistics.median(s[0] for s in samples)
        rows[name] = {
            "wall_s": wall,
            "cpu_s": statistics.median(s[1] for s in samples),
            "tflops": total_flops / wall / 1e12,
            "max_rel_diff": diffs[name],
            "samples_wall_s": [s[0] for s in samples],
        }
        if name != "ours" and "ours" in times:
            ratios = [h[0] / o[0] for h, o in zip(samples, times["ours"], strict=True)]
            rows[name]["speedup_ours"] = statistics.median(ratios)
    print(
        f"\n{args.device} {args.dtype}, {args.tokens} tokens, {args.experts} experts, "
        f"top-{args.top_k}, hidden {args.hidden}, intermediate {args.intermediate}"
    )
    print("| variant | wall s | CPU s | TFLOP/s | ours faster by | max rel diff |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        speed = f"{row['speedup_ours']:.2f}x" if "speedup_ours" in row else "-"
        print(
            f"| {name} | {row['wall_s']:.3f} | {row['cpu_s']:.3f} | {row['tflops']:.3f} "
            f"| {speed} | {row['max_rel_diff']:.1e} |"
        )
    if args.out:
        import transformers

        report = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": "uv run python " + " ".join(sys.argv),
            "machine": {
                "platform": platform.platform(),
                "threads": torch.get_num_threads(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            },
            "settings": vars(args),
            "flops_per_step": total_flops,
            "results": rows,
        }
        with open(args.out, "w") as f:
            f.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
