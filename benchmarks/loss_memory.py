"""Peak memory of forward+backward through the LM head and loss: masked vs chunked vs fused CE.

Run by hand (not part of the tests):

    uv run python benchmarks/loss_memory.py                  # CPU, float32, 4096 tokens, 128k vocab
    uv run python benchmarks/loss_memory.py --device cuda --dtype bfloat16

    uv run python benchmarks/loss_memory.py --variants fused --chunk-len 1024 512 256 --repeats 3

Each run is a fresh subprocess; with `--repeats`, the rounds are interleaved (every variant and
chunk length once, then again) so that load from other processes spreads over all of them. On
CPU the peak is the process's maximum resident set size (`ru_maxrss`) minus its resident set
size after the inputs were allocated; on CUDA it is `torch.cuda.max_memory_allocated` over the
memory allocated by the inputs. Masked and chunked include the `hidden @ W.T` logits matmul,
which the fused loss replaces; all three include the gradients of hidden states and LM head
weight. Time is wall-clock and, less sensitive to other processes on a shared CPU, the
process's CPU time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from _process_memory import measure_step

VARIANTS = ("masked", "chunked", "fused")


def add_common_args(parser: argparse.ArgumentParser, variants: tuple[str, ...]) -> None:
    """The options of the loss-memory benchmarks: device, shapes, runs, and the variants."""
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--ignored", type=float, default=0.0, help="fraction of ignored labels")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds of runs")
    parser.add_argument("--out", help="also write the results to this JSON file")
    parser.add_argument("--variants", nargs="+", default=list(variants), choices=variants)
    parser.add_argument("--variant", choices=variants, help=argparse.SUPPRESS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, VARIANTS)
    parser.add_argument(
        "--chunk-len",
        type=int,
        nargs="+",
        help="chunk length(s) of chunked and fused (default: each loss's own)",
    )
    return parser.parse_args(argv)


def run_variant(args: argparse.Namespace) -> dict[str, object]:
    """Forward+backward of one variant in this process; returns loss, peak bytes and seconds."""
    import torch

    from automodel.core.losses import (
        IGNORE_INDEX,
        ChunkedCrossEntropy,
        FusedLinearCrossEntropy,
        MaskedCrossEntropy,
    )

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    chunk = {} if args.chunk_len is None else {"chunk_len": args.chunk_len[0]}
    module = {
        "masked": MaskedCrossEntropy,
        "chunked": ChunkedCrossEntropy,
        "fused": FusedLinearCrossEntropy,
    }[args.variant](**({} if args.variant == "masked" else chunk))

    def loss_fn(h: torch.Tensor, w: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        return module(h, w, lab) if args.variant == "fused" else module(h @ w.T, lab)

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

    def step() -> torch.Tensor:
        loss = loss_fn(hidden, weight, labels)
        loss.backward()
        return loss

    loss, measured = measure_step(device.type, step)
    return {
        "variant": args.variant,
        "chunk_len": getattr(module, "chunk_len", None),
        "loss": loss.item(),
        **measured,
        "grad_hidden_norm": hidden.grad.float().norm().item(),
        "grad_weight_norm": weight.grad.float().norm().item(),
    }


def machine() -> dict[str, object]:
    """Where the numbers were measured."""
    import os
    import platform

    import torch

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def runs_of(args: argparse.Namespace) -> list[tuple[str, int | None]]:
    """(variant, chunk_len) of every run in one round; masked has no chunk length."""
    lengths = args.chunk_len or [None]
    runs = [(v, None) if v == "masked" else (v, c) for v in args.variants for c in lengths]
    return list(dict.fromkeys(runs))


def run_child(args: argparse.Namespace, run_variant: Callable[[Any], dict]) -> bool:
    """In a variant's own subprocess (`--variant`), run it and print its JSON for `run_json`."""
    if not args.variant:
        return False
    print(json.dumps(run_variant(args)))
    return True


def run_json(cmd: list[str]) -> dict[str, object]:
    """Run one variant's subprocess (see `run_child`) and return the JSON of its last line."""
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def summarise(runs: dict[str, list[dict]], grad_w_gib: float) -> dict[str, dict]:
    """Print a row per run (highest peak, median times of its repeats) and return the rows."""
    width = max(len(name) for name in runs)
    header = f"{'run':<{width}} {'chunk':>6} {'loss':>12} {'peak GiB':>9} {'- W.grad':>9}"
    print(f"{header} {'wall s':>7} {'cpu s':>7} {'|grad h|':>10} {'|grad W|':>10}")
    results = {}
    for name, rs in runs.items():
        r = results[name] = {
            **rs[0],
            "peak_bytes": max(x["peak_bytes"] for x in rs),
            "seconds": statistics.median(x["seconds"] for x in rs),
            "cpu_seconds": statistics.median(x["cpu_seconds"] for x in rs),
            "peak_bytes_per_repeat": [x["peak_bytes"] for x in rs],
            "seconds_per_repeat": [round(x["seconds"], 2) for x in rs],
            "cpu_seconds_per_repeat": [round(x["cpu_seconds"], 2) for x in rs],
        }
        print(
            f"{name:<{width}} {r['chunk_len'] or '-':>6} {r['loss']:>12.6f} "
            f"{r['peak_bytes'] / 2**30:>9.3f} {r['peak_bytes'] / 2**30 - grad_w_gib:>9.3f} "
            f"{r['seconds']:>7.1f} {r['cpu_seconds']:>7.1f} "
            f"{r['grad_hidden_norm']:>10.6f} {r['grad_weight_norm']:>10.6f}"
        )
    return results


def write_report(args: argparse.Namespace, script: str, base: list[str], **fields: object) -> None:
    """Write the command, machine, settings (args but the internal ones) and `fields` to args.out."""
    internal = ("variant", "save_grads", "out")
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([f"uv run python benchmarks/{script}", *base]),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in internal},
        **fields,
    }
    with open(args.out, "w") as f:
        f.write(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


def print_settings(args: argparse.Namespace, **settings: object) -> float:
    """Print the common settings, `settings` and the sizes that bound the peaks; return W.grad GiB."""
    logits_gib = args.tokens * args.vocab * 4 / 2**30
    extra = "".join(f"{k}={v} " for k, v in settings.items())
    print(
        f"device={args.device} dtype={args.dtype} tokens={args.tokens} vocab={args.vocab} "
        f"hidden={args.hidden} {extra}ignored={args.ignored} repeats={args.repeats} "
        f"(float32 logits alone: {logits_gib:.2f} GiB)"
    )
    grad_w_gib = args.vocab * args.hidden * 4 / 2**30
    print(f"every peak includes the float32 LM head weight grad: {grad_w_gib:.2f} GiB")
    return grad_w_gib


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if run_child(args, run_variant):
        return
    base = sys.argv[1:] if argv is None else argv
    chunk_len = "each loss's default" if args.chunk_len is None else args.chunk_len
    grad_w_gib = print_settings(args, chunk_len=chunk_len)
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for variant, chunk in runs_of(args):
            cmd = [sys.executable, __file__, *_without_chunk_len(base), "--variant", variant]
            cmd += [] if chunk is None else ["--chunk-len", str(chunk)]
            runs.setdefault(f"{variant}" + (f"@{chunk}" if chunk else ""), []).append(run_json(cmd))
    results = summarise(runs, grad_w_gib)
    ratios = {}
    if "masked" in results:
        for name in [n for n in results if n != "masked"]:
            ratio = ratios[name] = results[name]["peak_bytes"] / results["masked"]["peak_bytes"]
            print(f"{name}/masked peak: {ratio:.3f}")
    if args.out:
        write_report(args, "loss_memory.py", base, results=results, peak_over_masked=ratios)


def _without_chunk_len(argv: list[str]) -> list[str]:
    """The command-line arguments without `--chunk-len` and its values."""
    out, skipping = [], False
    for arg in argv:
        if arg.startswith("--chunk-len"):
            skipping = "=" not in arg
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        out.append(arg)
    return out


if __name__ == "__main__":
    main()
