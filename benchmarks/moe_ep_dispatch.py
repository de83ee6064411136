"""One expert-parallel MoE layer, all_to_all vs DeepEP dispatch: agreement and step time.

Run by hand under torchrun (not part of the tests):

    # CPU (gloo): the all_to_all dispatcher alone; deepep is reported as unavailable
    uv run torchrun --nproc-per-node 2 benchmarks/moe_ep_dispatch.py --tokens 512 --hidden 256
    # one node of 2-8 NVLink GPUs with automodel-moe[deepep]: both, and their agreement
    uv run torchrun --nproc-per-node 8 benchmarks/moe_ep_dispatch.py --dtype bfloat16 \\
        --out benchmarks/results/moe_ep_dispatch.json

Every rank builds the same `automodel.moe.MoE` layer (64 experts, top-8, hidden 1024, expert
intermediate 512 by default) and shards its experts over all ranks with
`shard_experts(..., dispatcher=...)`, once per dispatcher. Each rank feeds its own tokens
(`--tokens` per rank). One step is forward + backward (gradients of the input and of every
weight). Before timing, every dispatcher's output, input gradient and expert gradients are
compared with the first one's (the relative norm of the difference, the largest over ranks);
then the dispatchers run in alternating rounds and rank 0 prints the median step time (the
slowest rank's per step), tokens per second over all ranks and the expert-matmul TFLOP/s per
rank.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

DISPATCHERS = ("all_to_all", "deepep")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dispatchers", nargs="+", default=list(DISPATCHERS), choices=DISPATCHERS)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per rank")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the results as JSON here (rank 0)")
    return parser.parse_args(argv)


def build(args: argparse.Namespace, device: torch.device) -> dict[str, nn.Module]:
    """The layer sharded once per usable dispatcher; the others are reported and skipped."""
    from automodel.moe import MoE, MoEConfig, shard_experts

    config = MoEConfig(args.hidden, args.intermediate, args.experts, args.top_k)
    torch.manual_seed(0)  # the same weights on every rank
    layer = MoE(config)
    with torch.no_grad():
        layer.gate.weight.normal_(0, 0.02)  # roughly balanced routing
    layer = layer.to(device, getattr(torch, args.dtype))
    layers = {}
    for name in args.dispatchers:
        sharded = copy.deepcopy(layer)
        try:
            shard_experts(sharded, dist.group.WORLD, dispatcher=name)
        except RuntimeError as e:
            if dist.get_rank() == 0:
                print(f"{name}: skipped, {e}", flush=True)
            continue
        layers[name] = sharded.train()
    return layers


def step(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> list[torch.Tensor]:
    """Forward + backward; the output, the input gradient and the local expert gradients."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    y = layer(x)
    y.backward(dy)
    experts = [getattr(p.grad, "_local_tensor", p.grad) for p in layer.experts.parameters()]
    return [y.detach(), x.grad, *experts]


def agreement(layers: dict[str, nn.Module], x: torch.Tensor, dy: torch.Tensor) -> dict:
    """Per dispatcher, the largest relative norm difference from the first one, over ranks."""
    results = {name: step(layer, x, dy) for name, layer in layers.items()}
    ref = next(iter(results.values()))
    diffs = {}
    for name, tensors in results.items():
        worst = max(
            float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))
            for a, b in zip(tensors, ref, strict=True)
        )
        value = torch.tensor(worst, dtype=torch.float64, device=x.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        diffs[name] = value.item()
    return diffs


def timed(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> float:
    """Seconds of one step on the slowest rank."""
    if x.is_cuda:
        torch.cuda.synchronize()
    dist.barrier()
    start = time.perf_counter()
    step(layer, x, dy)
    if x.is_cuda:
        torch.cuda.synchronize()
    seconds = torch.tensor(time.perf_counter() - start, dtype=torch.float64, device=x.device)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    return seconds.item()


def main(argv: list[str] | None = None) -> None:
    """Build, compare, time and report."""
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    layers = build(args, device)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(100 + rank)  # every rank its own tokens
    x = torch.randn(args.tokens, args.hidden, generator=gen).to(device, dtype)
    dy = torch.randn(args.tokens, args.hidden, generator=gen).to(device, dtype)
    diffs = agreement(layers, x, dy)
    for _ in range(args.warmup):
        for layer in layers.values():
            step(layer, x, dy)
    times: dict[str, list[float]] = {name: [] for name in layers}
    order = list(layers)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            times[name].append(timed(layers[name], x, dy))
    rows_per_rank = args.tokens * args.top_k
    expert_flops = 3 * 2 * rows_per_rank * 3 * args.hidden * args.intermediate  # fwd + bwd
    results = {}
    for name, samples in times.items():
        seconds = statistics.median(samples)
        results[name] = {
            "step_s": seconds,
            "tokens_per_s": args.tokens * world / seconds,
            "expert_tflops_per_rank": expert_flops / seconds / 1e12,
            "rel_diff_from_first": diffs[name],
            "samples_s": samples,
        }
    if rank == 0:
        where = torch.cuda.get_device_name() if cuda else "cpu"
        print(
            f"\n{world} ranks ({where}), {args.dtype}, {args.tokens} tokens per rank, "
            f"{args.experts} experts top-{args.top_k}, hidden {args.hidden}, "
            f"intermediate {args.intermediate}"
        )
        print(
            "| dispatcher | step ms | tokens/s (all ranks) | expert TFLOP/s per rank | rel diff |"
        )
        print("|---|---|---|---|---|")
        for name, row in results.items():
            print(
                f"| {name} | {row['step_s'] * 1e3:.1f} | {row['tokens_per_s']:.0f} "
                f"| {row['expert_tflops_per_rank']:.2f} | {row['rel_diff_from_first']:.1e} |"
            )
        if args.out:
            report = {
                "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": "torchrun " + " ".join(sys.argv),
                "machine": {"platform": platform.platform(), "device": where, "ranks": world},
                "torch": torch.__version__,
                "settings": vars(args),
                "results": results,
            }
            with open(args.out, "w") as f:
                f.write(json.dumps(report, indent=2) + "\n")
    del layers, x, dy
    import gc

    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
