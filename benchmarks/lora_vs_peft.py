"""Training-step time and memory of LoRA on a Llama: automodel.peft vs Hugging Face peft.

Run by hand (not part of the tests):

    uv run python benchmarks/lora_vs_peft.py                       # CPU, float32, ~12 min on 2 cores
    uv run python benchmarks/lora_vs_peft.py --sizes small --repeats 5
    uv run python benchmarks/lora_vs_peft.py --device cuda --dtype bfloat16

Both variants train the same randomly initialised `LlamaForCausalLM` (built from a
`LlamaConfig` with a fixed seed) with LoRA r=16, alpha=32, no dropout, on every linear
layer but the LM head (ours: `match_all_linear=True`; peft: `target_modules="all-linear"`),
AdamW over the adapter parameters, batch 4 x 256 tokens. One step is forward (with the
loss) + backward + `optimizer.step()` + `zero_grad()`.

Every run is a fresh subprocess; runs go in interleaved rounds and the order of the two
variants flips every round, so that load from other processes spreads over both. Per run:
a few warm-up steps, then the median of the timed steps (wall clock and process CPU time,
the steadier of the two on a shared machine). Then, with `--pairs N` (default 10), one more
process per size builds both models and alternates their steps (ours, peft, peft, ours, ...)
N times: the median of the per-pair time ratios is the comparison least affected by load
that drifts over minutes. Memory, per run:

- live tensor peak ("live MiB"): the highest sum of live tensor bytes during one step, over
  those live at its start, from the allocation and free events torch.profiler records
  (`profile_memory=True`; the CPU allocator reports every tensor to it); exact and
  independent of load and of the heap allocator;
- saved for backward: bytes of the tensors autograd keeps from the forward for the backward
  (each storage counted once, parameters left out), from one step under
  `torch.autograd.graph.saved_tensors_hooks`;
- "RSS+": CPU: peak RSS over the training steps minus the RSS after the setup (model, LoRA,
  optimizer; `malloc_trim` first), Linux `ru_maxrss`; CUDA: `max_memory_allocated` minus
  the memory allocated after the setup. On CPU this includes the heap allocator's
  fragmentation, which depends on what the setup left behind;
- aten op calls in one step (torch.profiler, nested ops included), to show that both do the
  same work;
- "proc RSS": the process's peak RSS overall, MiB (includes the imported libraries, which
  differ: peft imports transformers' and its own modules, ours only transformers for the
  model).

The table shows medians over the repeats; `--out` writes every run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from _process_memory import current_rss, peak_rss, profile_step, trim_heap

VARIANTS = ("ours", "peft")
SIZES: dict[str, dict[str, int]] = {
    "small": dict(
        hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4
    ),
    "medium": dict(
        hidden_size=1024, intermediate_size=2752, num_hidden_layers=8, num_attention_heads=16
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per run")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of runs")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument(
        "--pairs",
        type=int,
        default=10,
        help="pairs of alternating steps of both variants in one process per size (0: none)",
    )
    parser.add_argument("--out", help="also write the results to this JSON file")
    parser.add_argument("--run", nargs=2, metavar=("SIZE", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--paired", metavar="SIZE", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def minor_faults() -> int:
    """Minor page faults of this process so far (each maps a fresh page the heap asked for)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def build(args: argparse.Namespace, size: str, variant: str) -> Any:
    """The seeded Llama with LoRA from ``variant`` on every linear layer but the LM head."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=args.vocab, max_position_embeddings=args.seq, **SIZES[size])
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device=args.device, dtype=getattr(torch, args.dtype))
    alpha = 2 * args.rank
    if variant == "ours":
        from automodel.peft import LoraConfig, apply_lora

        return apply_lora(model, LoraConfig(dim=args.rank, alpha=alpha, match_all_linear=True))
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=args.rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear"
    )
    return get_peft_model(model, config)


def saved_for_backward_bytes(model: Any, step: Any) -> int:
    """Bytes of the non-parameter storages autograd saves during ``step()`` (each counted once)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def profiled_step(step: Any) -> tuple[dict[str, int], int]:
    """One ``step()`` under torch.profiler: aten op call counts and the peak of live tensor bytes
    (see ``profile_step``)."""
    prof, peak = profile_step(step)
    counts = dict(
        sorted((e.key, e.count) for e in prof.key_averages() if e.key.startswith("aten::"))
    )
    return counts, peak


def trainer(args: argparse.Namespace, size: str, variant: str) -> tuple[Any, Any, list[float]]:
    """The model of ``variant``, a function doing one training step on it, and its losses."""
    import torch

    model = build(args, size, variant)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(args.device)
    losses: list[float] = []

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())

    return model, step, losses


def paired(args: argparse.Namespace, size: str) -> dict[str, Any]:
    """Both variants in this one process, steps alternating (ABBA): time ratio per pair of steps."""
    import torch

    torch.set_num_threads(args.threads)
    steps = {variant: trainer(args, size, variant)[1] for variant in VARIANTS}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    seconds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for i in range(args.pairs):
        for variant in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
            if args.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            steps[variant]()
            if args.device == "cuda":
                torch.cuda.synchronize()
            seconds[variant].append(time.perf_counter() - t0)
    ratios = [o / p for o, p in zip(seconds["ours"], seconds["peft"], strict=True)]
    return {
        "size": size,
        "seconds": seconds,
        "median_seconds": {v: statistics.median(t) for v, t in seconds.items()},
        "ours_over_peft_median": statistics.median(ratios),
        "pairs_ours_faster": sum(r < 1 for r in ratios),
        "pairs": len(ratios),
    }


def run(args: argparse.Namespace, size: str, variant: str) -> dict[str, Any]:
    """Set up one variant in this process, train, and measure."""
    import torch

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    load_before = os.getloadavg()[0]
    model, step, losses = trainer(args, size, variant)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    trim_heap()
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline, high_water = current_rss(), peak_rss()
    seconds, cpu_seconds, faults = [], [], []
    for i in range(args.warmup + args.steps):
        sync()
        t0, c0, f0 = time.perf_counter(), time.process_time(), minor_faults()
        step()
        sync()
        if i >= args.warmup:
            seconds.append(time.perf_counter() - t0)
            cpu_seconds.append(time.process_time() - c0)
            faults.append(minor_faults() - f0)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        peak = peak_rss() - baseline
        if peak_rss() <= high_water:
            print(f"warning: {size}/{variant}: training never exceeded the setup's RSS high water")
    saved = saved_for_backward_bytes(model, step)
    ops, live_peak = profiled_step(step)
    if cuda:  # the profiler's events above are the host's; on CUDA ask the caching allocator
        sync()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step()
        sync()
        live_peak = torch.cuda.max_memory_allocated() - start
    return {
        "size": size,
        "variant": variant,
        "trainable_params": sum(p.numel() for p in trainable),
        "total_params": sum(p.numel() for p in model.parameters()),
        "seconds": statistics.median(seconds),
        "cpu_seconds": statistics.median(cpu_seconds),
        "seconds_per_step": [round(s, 4) for s in seconds],
        "minor_page_faults_per_step": statistics.median(faults),
        "peak_bytes": peak,
        "rss_after_setup_bytes": baseline if not cuda else None,
        "live_tensor_peak_bytes": live_peak,
        "saved_for_backward_bytes": saved,
        "aten_calls": sum(ops.values()),
        "aten_calls_by_op": ops,
        "process_peak_rss_bytes": peak_rss(),
        "loss_first": losses[0],
        "loss_last_timed": losses[args.warmup + args.steps - 1],
        "load_average": [load_before, os.getloadavg()[0]],
    }


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    import platform

    import peft
    import torch
    import transformers

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    """Run every size and variant in fresh subprocesses, interleaved; print and save the table."""
    args = parse_args(argv)
    if args.run:
        print(json.dumps(run(args, *args.run)))
        return
    if args.paired:
        print(json.dumps(paired(args, args.paired)))
        return
    base = sys.argv[1:] if argv is None else argv
    print(
        f"device={args.device} dtype={args.dtype} batch={args.batch} seq={args.seq} "
        f"vocab={args.vocab} rank={args.rank} warmup={args.warmup} steps={args.steps} "
        f"repeats={args.repeats} threads={args.threads}; load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_ in range(args.repeats):
        for size in args.sizes:
            order = args.variants if round_ % 2 == 0 else args.variants[::-1]
            for variant in order:
                cmd = [sys.executable, __file__, *_without_out(base), "--run", size, variant]
                out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                runs.setdefault((size, variant), []).append(r)
                print(
                    f"  round {round_ + 1} {size:<6} {variant:<4} {r['seconds'] * 1e3:8.1f} ms/step "
                    f"cpu {r['cpu_seconds'] * 1e3:8.1f} ms  peak +{r['peak_bytes'] / 2**20:7.1f} MiB"
                    f"  {r['minor_page_faults_per_step']:7.0f} page faults/step"
                    f"  load {r['load_average'][0]:.2f} -> {r['load_average'][1]:.2f}",
                    flush=True,
                )
    pairs: dict[str, dict[str, Any]] = {}
    if args.pairs and set(args.variants) == set(VARIANTS):
        for size in args.sizes:
            cmd = [sys.executable, __file__, *_without_out(base), "--paired", size]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            r = pairs[size] = json.loads(out.strip().splitlines()[-1])
            med = r["median_seconds"]
            print(
                f"  paired {size:<6} ours {med['ours'] * 1e3:8.1f} ms/step, peft "
                f"{med['peft'] * 1e3:8.1f} ms/step; ours/peft per pair (median) "
                f"{r['ours_over_peft_median']:.3f}, ours faster in {r['pairs_ours_faster']} of "
                f"{r['pairs']} pairs",
                flush=True,
            )
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header = (
        f"{'size':<6} {'variant':<7} {'trainable':>10} {'ms/step':>8} {'x peft':>7} {'cpu ms':>8} "
        f"{'x peft':>7} {'live MiB':>8} {'x peft':>7} {'saved MiB':>9} {'RSS+ MiB':>8} "
        f"{'x peft':>7} {'aten ops':>8} {'proc RSS':>8} {'loss first -> last':>20}"
    )
    print(header)
    summary: dict[str, dict[str, Any]] = {}
    for size in args.sizes:
        for variant in args.variants:
            rs = runs[(size, variant)]
            summary[f"{size}/{variant}"] = {
                "trainable_params": rs[0]["trainable_params"],
                "seconds": statistics.median(r["seconds"] for r in rs),
                "cpu_seconds": statistics.median(r["cpu_seconds"] for r in rs),
                "peak_bytes": statistics.median(r["peak_bytes"] for r in rs),
                "live_tensor_peak_bytes": statistics.median(
                    r["live_tensor_peak_bytes"] for r in rs
                ),
                "saved_for_backward_bytes": statistics.median(
                    r["saved_for_backward_bytes"] for r in rs
                ),
                "aten_calls": rs[0]["aten_calls"],
                "process_peak_rss_bytes": statistics.median(
                    r["process_peak_rss_bytes"] for r in rs
                ),
                "loss_first": rs[0]["loss_first"],
                "loss_last_timed": rs[0]["loss_last_timed"],
            }
        ref = summary.get(f"{size}/peft")
        for variant in args.variants:
            s = summary[f"{size}/{variant}"]
            if ref is not None:
                for key in ("seconds", "cpu_seconds", "peak_bytes", "live_tensor_peak_bytes"):
                    s[f"{key}_x_peft"] = s[key] / ref[key] if ref[key] else None
            print(
                f"{size:<6} {variant:<7} {s['trainable_params']:>10,} {s['seconds'] * 1e3:>8.1f} "
                f"{_ratio(s, 'seconds_x_peft')} {s['cpu_seconds'] * 1e3:>8.1f} "
                f"{_ratio(s, 'cpu_seconds_x_peft')} {s['live_tensor_peak_bytes'] / 2**20:>8.1f} "
                f"{_ratio(s, 'live_tensor_peak_bytes_x_peft')} "
                f"{s['saved_for_backward_bytes'] / 2**20:>9.1f} {s['peak_bytes'] / 2**20:>8.1f} "
                f"{_ratio(s, 'peak_bytes_x_peft')} {s['aten_calls']:>8} "
                f"{s['process_peak_rss_bytes'] / 2**20:>8.0f} "
                f"{s['loss_first']:>9.4f} -> {s['loss_last_timed']:.4f}"
            )
    if args.out:
        report = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(["uv run python benchmarks/lora_vs_peft.py", *base]),
            "machine": machine(),
            "settings": {k: v for k, v in vars(args).items() if k not in ("run", "out")},
            "model_sizes": {s: SIZES[s] for s in args.sizes},
            "summary": summary,
            "paired": pairs,
            "runs": [r for rs in runs.values() for r in rs],
        }
        with open(args.out, "w") as f:
            f.write(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


def _ratio(summary: dict[str, Any], key: str) -> str:
    """A ratio column: three decimals, or '-' without a peft reference."""
    value = summary.get(key)
    return f"{value:>7.3f}" if value is not None else f"{'-':>7}"


def _without_out(argv: list[str]) -> list[str]:
    """The command-line arguments without ``--out`` and its value."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--out":
            skip = True
            continue
        if not arg.startswith("--out="):
            out.append(arg)
    return out


if __name__ == "__main__":
    main()
