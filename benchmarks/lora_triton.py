"""Forward+backward time and peak memory of one LoraLinear: plain torch path vs fused Triton kernel.

Run by hand on a CUDA machine (not part of the tests):

    uv run python benchmarks/lora_triton.py
    uv run python benchmarks/lora_triton.py --tokens 8192 --in-features 4096 --out-features 4096 \
        --rank 16 --dtype bfloat16 --iters 50 --out lora_triton.json

The base weight is frozen (the LoRA case) and the input requires grad, so backward computes the
gradients of x, lora_A and lora_B. Times are the median over `--iters` of CUDA-event timed
steps after `--warmup` steps (the first of which autotunes the kernel). Peak memory is
`torch.cuda.max_memory_allocated` during one forward+backward, over the memory allocated
before it (module, input and output gradient). Without CUDA the script exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

VARIANTS = ("plain", "fused")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192, help="rows of x (batch * sequence)")
    parser.add_argument("--in-features", type=int, default=4096)
    parser.add_argument("--out-features", type=int, default=4096)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--bias", action="store_true", help="give the base linear a bias")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument(
        "--lora-dtype",
        choices=("bfloat16", "float16", "float32"),
        help="adapter dtype (default: LoraLinear's, float32 on a 16-bit base)",
    )
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", help="also write the results to this JSON file")
    return parser.parse_args(argv)


def build(args: argparse.Namespace, use_triton: bool) -> tuple:
    """The module, its input and the output gradient, all on CUDA, from seed 0."""
    import torch
    from torch import nn

    from automodel.peft import LoraConfig, LoraLinear

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    base = nn.Linear(args.in_features, args.out_features, bias=args.bias, device="cuda")
    base = base.to(dtype).requires_grad_(False)
    config = LoraConfig(
        dim=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        lora_dtype=args.lora_dtype,
        target_modules=["proj"],
        use_triton=use_triton,
    )
    module = LoraLinear(base, config)
    nn.init.normal_(module.lora_B.weight, std=0.02)
    x = torch.randn(args.tokens, args.in_features, device="cuda", dtype=dtype)
    grad = torch.randn(args.tokens, args.out_features, device="cuda", dtype=dtype)
    return module, x.requires_grad_(True), grad


def step(module, x, grad) -> tuple:
    """One forward+backward with fresh gradients; returns the output and the gradients."""
    for t in (x, module.lora_A.weight, module.lora_B.weight):
        t.grad = None
    out = module(x)
    out.backward(grad)
    return out.detach(), x.grad, module.lora_A.weight.grad, module.lora_B.weight.grad


def timed(fn, iters: int) -> list[float]:
    """Milliseconds of each of `iters` calls of `fn`, by CUDA events."""
    import torch

    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def run_variant(args: argparse.Namespace, variant: str) -> dict[str, object]:
    """Forward and forward+backward times and the peak memory of one variant."""
    import torch

    module, x, grad = build(args, use_triton=variant == "fused")
    for _ in range(args.warmup):
        step(module, x, grad)
    for t in (x, module.lora_A.weight, module.lora_B.weight):
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    outputs = step(module, x, grad)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline

    def forward() -> None:
        with torch.no_grad():
            module(x)

    fwd = timed(forward, args.iters)
    fwd_bwd = timed(lambda: step(module, x, grad), args.iters)
    return {
        "variant": variant,
        "forward_ms": statistics.median(fwd),
        "forward_backward_ms": statistics.median(fwd_bwd),
        "peak_bytes": peak,
        "outputs": [t.float().cpu() for t in outputs],
    }


def machine() -> dict[str, object]:
    """Where the numbers were measured."""
    import platform

    import torch
    import triton

    return {
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
    }


def differences(plain: list, fused: list) -> dict[str, float]:
    """Max abs difference of output and gradients, relative to the plain path's max abs value."""
    names = ("out", "grad_x", "grad_A", "grad_B")
    return {
        n: ((f - p).abs().max() / p.abs().max()).item()
        for n, p, f in zip(names, plain, fused, strict=True)
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        print(
            "lora_triton.py needs a CUDA device (the fused kernel runs on CUDA only)",
            file=sys.stderr,
        )
        return 2
    if importlib.util.find_spec("triton") is None:
        print("lora_triton.py needs triton: pip install 'automodel-peft[triton]'", file=sys.stderr)
        return 2
    print(
        f"tokens={args.tokens} in={args.in_features} out={args.out_features} rank={args.rank} "
        f"dtype={args.dtype} lora_dtype={args.lora_dtype or 'default'} dropout={args.dropout} "
        f"bias={args.bias} iters={args.iters} ({torch.cuda.get_device_name()})"
    )
    results = {v: run_variant(args, v) for v in VARIANTS}
    print(f"{'variant':<8} {'fwd ms':>8} {'fwd+bwd ms':>11} {'peak MiB':>9}")
    for name, r in results.items():
        print(
            f"{name:<8} {r['forward_ms']:>8.3f} {r['forward_backward_ms']:>11.3f} "
            f"{r['peak_bytes'] / 2**20:>9.1f}"
        )
    plain, fused = results["plain"], results["fused"]
    speedup = plain["forward_backward_ms"] / fused["forward_backward_ms"]
    memory = fused["peak_bytes"] / plain["peak_bytes"]
    diffs = differences(plain.pop("outputs"), fused.pop("outputs"))
    print(f"fused/plain: fwd+bwd speedup {speedup:.2f}x, peak memory {memory:.3f}")
    print("relative max difference: " + " ".join(f"{k}={v:.1e}" for k, v in diffs.items()))
    if args.out:
        base = sys.argv[1:] if argv is None else argv
        report = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(["uv run python benchmarks/lora_triton.py", *base]),
            "machine": machine(),
            "settings": vars(args),
            "results": results,
            "speedup_forward_backward": speedup,
            "peak_fused_over_plain": memory,
            "relative_difference": diffs,
        }
        with open(args.out, "w") as f:
            f.write(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
