"""Peak memory of forward+backward through the LM head and loss: masked vs chunked vs fused CE.

Run by hand (not part of the tests):

    uv run python benchmarks/loss_memory.py                  # CPU, float32, 4096 tokens, 128k vocab
    uv run python benchmarks/loss_memory.py --device cuda --dtype bfloat16

Each variant runs in its own subprocess. On CPU the peak is the process's maximum resident set
size (`ru_maxrss`) minus its resident set size after the inputs were allocated; on CUDA it is
`torch.cuda.max_memory_allocated` over the memory allocated by the inputs. Masked and chunked
include the `hidden @ W.T` logits matmul, which the fused loss replaces; all three include the
gradients of hidden states and LM head weight.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VARIANTS = ("masked", "chunked", "fused")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--chunk-len", type=int, default=1024)
    parser.add_argument("--ignored", type=float, default=0.0, help="fraction of ignored labels")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_variant(args: argparse.Namespace) -> dict[str, float | str]:
    """Forward+backward of one variant in this process; returns loss, peak bytes and seconds."""
    import torch

    from automodel.core.losses import (
        IGNORE_INDEX,
        ChunkedCrossEntropy,
        FusedLinearCrossEntropy,
        MaskedCrossEntropy,
    )

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    losses = {
        "masked": lambda h, w, lab: MaskedCrossEntropy()(h @ w.T, lab),
        "chunked": lambda h, w, lab: ChunkedCrossEntropy(args.chunk_len)(h @ w.T, lab),
        "fused": lambda h, w, lab: FusedLinearCrossEntropy(args.chunk_len)(h, w, lab),
    }
    loss_fn = losses[args.variant]

    def inputs(tokens: int, vocab: int, hidden: int) -> tuple[torch.Tensor, ...]:
        # Filled in place: a temporary here would raise the high-water mark before measuring.
        gen = torch.Generator(device).manual_seed(0)
        h = torch.empty(tokens, hidden, dtype=dtype, device=device).normal_(generator=gen)
        w = torch.empty(vocab, hidden, dtype=dtype, device=device).normal_(generator=gen)
        w.div_(hidden**0.5)
        labels = torch.randint(0, vocab, (tokens,), generator=gen, device=device)
        ignored = torch.rand(tokens, generator=gen, device=device) < args.ignored
        labels[ignored] = IGNORE_INDEX
        return h.requires_grad_(True), w.requires_grad_(True), labels

    loss_fn(*inputs(8, 64, 16)).backward()  # warm up lazy initialisation outside the measurement
    hidden, weight, labels = inputs(args.tokens, args.vocab, args.hidden)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = current_rss()
        high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    loss = loss_fn(hidden, weight, labels)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
        if peak + baseline <= high_water:
            raise RuntimeError("the measured step did not exceed the earlier RSS high-water mark")
    return {
        "variant": args.variant,
        "loss": loss.item(),
        "peak_bytes": peak,
        "seconds": time.perf_counter() - start,
        "grad_hidden_norm": hidden.grad.float().norm().item(),
        "grad_weight_norm": weight.grad.float().norm().item(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    base = sys.argv[1:] if argv is None else argv
    logits_gib = args.tokens * args.vocab * 4 / 2**30
    print(
        f"device={args.device} dtype={args.dtype} tokens={args.tokens} vocab={args.vocab} "
        f"hidden={args.hidden} chunk_len={args.chunk_len} ignored={args.ignored} "
        f"(float32 logits alone: {logits_gib:.2f} GiB)"
    )
    grad_w_gib = args.vocab * args.hidden * 4 / 2**30
    print(f"every peak includes the float32 LM head weight grad: {grad_w_gib:.2f} GiB")
    header = f"{'variant':<8} {'loss':>12} {'peak GiB':>9} {'- W.grad':>9} {'seconds':>8}"
    print(f"{header} {'|grad h|':>10} {'|grad W|':>10}")
    results = {}
    for variant in args.variants:
        cmd = [sys.executable, __file__, *base, "--variant", variant]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        r = results[variant] = json.loads(out.strip().splitlines()[-1])
        print(
            f"{variant:<8} {r['loss']:>12.6f} {r['peak_bytes'] / 2**30:>9.3f} "
            f"{r['peak_bytes'] / 2**30 - grad_w_gib:>9.3f} {r['seconds']:>8.1f} "
            f"{r['grad_hidden_norm']:>10.6f} {r['grad_weight_norm']:>10.6f}"
        )
    if "masked" in results:
        for variant in [v for v in results if v != "masked"]:
            ratio = results[variant]["peak_bytes"] / results["masked"]["peak_bytes"]
            print(f"{variant}/masked peak: {ratio:.3f}")


if __name__ == "__main__":
    main()
