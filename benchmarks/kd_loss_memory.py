"""Peak memory of forward+backward of a distillation loss: fused-linear KD vs naive full-logit KD.

Run by hand (not part of the tests):

    uv run python benchmarks/kd_loss_memory.py               # CPU, float32, 4096 tokens, 128k vocab
    uv run python benchmarks/kd_loss_memory.py --repeats 3 --out benchmarks/results/kd_loss_memory.json
    uv run python benchmarks/kd_loss_memory.py --device cuda --dtype bfloat16

Both variants compute `(1 - kd_ratio) * CE + kd_ratio * T^2 * KL(p_teacher || p_student)` over
the label tokens from the student's hidden states and LM head (both trained) and the teacher's
hidden states and LM head (frozen). `naive` builds the full logits of both heads, takes
`log_softmax` of each at temperature T, `F.kl_div(..., log_target=True)` and
`F.cross_entropy`; `fused` is `automodel.core.losses.FusedLinearKDLoss`. Each run is a fresh
subprocess; peak memory is measured as in loss_memory.py (CPU: `ru_maxrss` over the resident
set size after the inputs were allocated; CUDA: `torch.cuda.max_memory_allocated` over the
inputs) and includes the grads of student hidden states and LM head weight. After the
measurement each run saves its grads, and the parent prints the largest absolute difference
between the variants' losses and grads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _process_memory import measure_step
from loss_memory import (
    add_common_args,
    print_settings,
    run_child,
    run_json,
    summarise,
    write_report,
)

VARIANTS = ("naive", "fused")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, VARIANTS)  # --hidden is the student's
    parser.add_argument("--teacher-hidden", type=int, default=2048)
    parser.add_argument("--kd-ratio", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--chunk-len", type=int, default=512, help="of the fused loss")
    parser.add_argument("--save-grads", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def naive_kd_loss(args: argparse.Namespace, ignore_index: int):
    """The textbook distillation loss on the full logits of both heads."""
    import torch
    import torch.nn.functional as F

    r, t = args.kd_ratio, args.temperature

    def loss_fn(h, w, teacher_h, teacher_w, labels):
        logits = (h @ w.T).float()
        with torch.no_grad():
            log_pt = torch.log_softmax((teacher_h @ teacher_w.T).float() / t, dim=-1)
        valid = labels != ignore_index
        num = valid.sum().clamp_min(1)
        ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum") / num
        log_ps = torch.log_softmax(logits / t, dim=-1)
        kl_per_token = F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(-1)
        kl = kl_per_token.masked_fill(~valid, 0.0).sum() / num
        return (1 - r) * ce + r * t * t * kl

    return loss_fn


def run_variant(args: argparse.Namespace) -> dict[str, object]:
    """Forward+backward of one variant in this process; returns loss, peak bytes and seconds."""
    import torch

    from automodel.core.losses import IGNORE_INDEX, FusedLinearKDLoss

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.variant == "fused":
        loss_fn = FusedLinearKDLoss(args.kd_ratio, args.temperature, args.chunk_len)
    else:
        loss_fn = naive_kd_loss(args, IGNORE_INDEX)

    def inputs(tokens: int, vocab: int, hidden: int, teacher_hidden: int):
        # Filled in place: a temporary here would raise the high-water mark before measuring.
        gen = torch.Generator(device).manual_seed(0)

        def normal(*shape: int, scale: float = 1.0) -> torch.Tensor:
            t = torch.empty(*shape, dtype=dtype, device=device).normal_(generator=gen)
            return t.mul_(scale)

        h = normal(tokens, hidden).requires_grad_(True)
        w = normal(vocab, hidden, scale=hidden**-0.5).requires_grad_(True)
        teacher_h = normal(tokens, teacher_hidden)
        teacher_w = normal(vocab, teacher_hidden, scale=2 * teacher_hidden**-0.5)
        labels = torch.randint(0, vocab, (tokens,), generator=gen, device=device)
        ignored = torch.rand(tokens, generator=gen, device=device) < args.ignored
        labels[ignored] = IGNORE_INDEX
        return h, w, teacher_h, teacher_w, labels

    loss_fn(*inputs(8, 64, 16, 24)).backward()  # lazy initialisation outside the measurement
    tensors = inputs(args.tokens, args.vocab, args.hidden, args.teacher_hidden)
    hidden, weight = tensors[:2]

    def step():
        loss = loss_fn(*tensors)
        loss.backward()
        return loss

    loss, measured = measure_step(device.type, step)
    if args.save_grads:
        torch.save({"hidden": hidden.grad, "weight": weight.grad}, args.save_grads)
    return {
        "variant": args.variant,
        "chunk_len": args.chunk_len if args.variant == "fused" else None,
        "loss": loss.item(),
        **measured,
        "grad_hidden_norm": hidden.grad.float().norm().item(),
        "grad_weight_norm": weight.grad.float().norm().item(),
    }


def max_abs_diff(path_a: Path, path_b: Path) -> dict[str, float]:
    """Largest absolute difference of each saved grad, read memory-mapped a block of rows at a time."""
    import torch

    a, b = torch.load(path_a, mmap=True), torch.load(path_b, mmap=True)
    out = {}
    for name in a:
        rows = a[name].shape[0]
        step = max(1, 2**24 // a[name][0].numel())
        out[name] = max(
            (a[name][i : i + step].float() - b[name][i : i + step].float()).abs().max().item()
            for i in range(0, rows, step)
        )
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if run_child(args, run_variant):
        return
    base = sys.argv[1:] if argv is None else argv
    grad_w_gib = print_settings(  # of the student's LM head
        args,
        teacher_hidden=args.teacher_hidden,
        kd_ratio=args.kd_ratio,
        temperature=args.temperature,
        chunk_len=args.chunk_len,
    )
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        grads = {v: Path(tmp) / f"{v}.pt" for v in args.variants}
        for round_ in range(args.repeats):
            for variant in args.variants:
                cmd = [sys.executable, __file__, *base, "--variant", variant]
                cmd += ["--save-grads", str(grads[variant])] if round_ == 0 else []
                runs.setdefault(variant, []).append(run_json(cmd))
        diffs = max_abs_diff(*grads.values()) if len(grads) == 2 else {}
    results = summarise(runs, grad_w_gib)
    agreement = {}
    if set(results) == set(VARIANTS):
        naive, fused = results["naive"], results["fused"]
        agreement = {
            "peak_fused_over_naive": fused["peak_bytes"] / naive["peak_bytes"],
            "loss_abs_diff": abs(fused["loss"] - naive["loss"]),
            **{f"grad_{k}_max_abs_diff": v for k, v in diffs.items()},
        }
        print(f"fused/naive peak: {agreement['peak_fused_over_naive']:.3f}")
        print(
            f"max abs diff: loss {agreement['loss_abs_diff']:.3g}, grad hidden "
            f"{diffs['hidden']:.3g}, grad weight {diffs['weight']:.3g}"
        )
    if args.out:
        write_report(args, "kd_loss_memory.py", base, results=results, agreement=agreement)


if __name__ == "__main__":
    main()
