"""Memory of QLoRA (NF4 base weights) vs LoRA on the bfloat16 base, for a small Llama.

Run by hand (not part of the tests; needs the extra `automodel-peft[qlora]`, i.e. torchao,
which the workspace's dev dependencies include):

    uv run python benchmarks/qlora_memory.py --out benchmarks/results/qlora_memory.json  # ~1 min
    uv run python benchmarks/qlora_memory.py --hidden 2048 --layers 16 --batch 1
    uv run python benchmarks/qlora_memory.py --device cuda

Both variants build the same seeded `LlamaForCausalLM` in bfloat16 and put LoRA r=16 on
every linear layer but the LM head (`match_all_linear=True`, float32 adapters, the
default on a 16-bit base); `nf4` adds `quantize_base="nf4"`, which stores each wrapped
base weight as a torchao `NF4Tensor`. Each variant runs in a fresh subprocess and reports:

- parameter bytes: every parameter and buffer of the model, an NF4 weight counted by the
  inner tensors it holds (4-bit codes, block scales and their scales), split into the
  wrapped linear weights, the adapters and the rest (embeddings, norms, LM head stay bf16);
- step live peak: the highest sum of live tensor bytes during one forward+backward on
  `--batch` x `--seq` tokens (with the loss) over those live at its start, from the
  allocation and free events torch.profiler records (`profile_memory=True`); exact and free
  of the heap allocator's fragmentation (CUDA: `max_memory_allocated` over the memory
  allocated after the setup); "params+live" adds the parameter bytes;
- RSS (CPU, Linux): "setup RSS" is the resident set size after the setup minus before
  building the model, "step RSS" the `ru_maxrss` of the step minus the RSS after the setup
  (after a warm-up on 8 tokens and `malloc_trim`), "RSS total" their sum. These include
  glibc's heap fragmentation and vary from run to run by up to ~300 MiB here; the live
  numbers are the ones to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from _process_memory import current_rss, peak_rss, profile_step, trim_heap

VARIANTS = ("bf16", "nf4")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument(
        "--intermediate", type=int, help="default: 2.6875 x hidden (Llama's 11008/4096)"
    )
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--out", help="also write the results to this JSON file")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def live_tensor_peak(step: Any) -> int:
    """Peak of live tensor bytes during ``step()`` over those live at its start (see
    ``profile_step``)."""
    return profile_step(step)[1]


def tensor_bytes(t: Any) -> int:
    """Bytes a tensor holds; a tensor subclass (NF4Tensor) by the inner tensors it flattens to."""
    data = t.data if hasattr(t, "data") else t
    flatten = getattr(type(data), "__tensor_flatten__", None)
    if flatten is not None:
        names, _ = data.__tensor_flatten__()
        return sum(tensor_bytes(getattr(data, n)) for n in names)
    return data.numel() * data.element_size()


def model_bytes(model: Any) -> dict[str, int]:
    """Parameter and buffer bytes: wrapped base weights, adapters, everything else."""
    from automodel.peft import lora_modules

    base_weights = {id(m.weight) for _, m in lora_modules(model)}
    out = {"linear_base": 0, "adapters": 0, "other": 0}
    tensors = {id(t): (n, t) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    for key, (name, t) in tensors.items():
        part = "linear_base" if key in base_weights else "adapters" if ".lora_" in name else "other"
        out[part] += tensor_bytes(t)
    out["total"] = sum(out.values())
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build one variant in this process, then measure its bytes and one forward+backward."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from automodel.peft import LoraConfig, apply_lora, lora_summary

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    intermediate = args.intermediate or round(args.hidden * 2.6875 / 64) * 64
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        max_position_embeddings=args.seq,
    )
    if args.variant == "nf4":
        import torchao.quantization  # noqa: F401  (its import is not the model's memory)
    trim_heap()
    rss_before = current_rss()
    alloc_before = torch.cuda.memory_allocated() if cuda else 0
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(args.device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    quant = "nf4" if args.variant == "nf4" else None
    lora = LoraConfig(
        dim=args.rank, alpha=2 * args.rank, match_all_linear=True, quantize_base=quant
    )
    apply_lora(model, lora)
    model.train()
    summary = lora_summary(model)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(args.device)

    def step(x: torch.Tensor) -> float:
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.item()

    step(ids[:1, :8])  # lazy initialisation outside the measurement
    trim_heap()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        setup = torch.cuda.memory_allocated() - alloc_before
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = current_rss()
        setup = baseline - rss_before
        high_water = peak_rss()
    t0 = time.perf_counter()
    loss = step(ids)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if cuda:
        peak = live_peak = torch.cuda.max_memory_allocated() - baseline
    else:
        peak = peak_rss() - baseline
        if peak_rss() <= high_water:
            print("warning: the measured step did not exceed the earlier RSS high-water mark")
        live_peak = live_tensor_peak(lambda: step(ids))
    params = model_bytes(model)
    return {
        "variant": args.variant,
        "config": config.to_diff_dict(),
        "lora_modules": len(summary.modules),
        "quantized_modules": summary.quantized_modules,
        "trainable_params": summary.trainable_params,
        "bytes": params,
        "step_live_peak_bytes": live_peak,
        "live_total_peak_bytes": params["total"] + live_peak,
        "setup_bytes": setup,
        "step_peak_bytes": peak,
        "total_peak_bytes": setup + peak,
        "process_peak_rss_bytes": peak_rss(),
        "step_seconds": seconds,
        "loss": loss,
    }


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    import platform

    import torch
    import torchao

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchao": torchao.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    """Run both variants in fresh subprocesses; print the table and the nf4/bf16 ratios."""
    args = parse_args(argv)
    if args.variant:
        print(json.dumps(run(args)))
        return
    base = sys.argv[1:] if argv is None else argv
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"device={args.device} hidden={args.hidden} layers={args.layers} vocab={args.vocab} "
        f"batch={args.batch} seq={args.seq} rank={args.rank}; load average {load}"
    )
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, *base, "--variant", variant]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    mib = 2**20
    print(
        f"{'variant':<8} {'linear MiB':>10} {'adapters':>9} {'other':>8} {'params MiB':>10} "
        f"{'step live':>9} {'params+live':>11} {'setup RSS':>9} {'step RSS':>9} {'RSS total':>9} "
        f"{'step s':>7} {'loss':>8}"
    )
    for name, r in results.items():
        b = r["bytes"]
        print(
            f"{name:<8} {b['linear_base'] / mib:>10.1f} {b['adapters'] / mib:>9.1f} "
            f"{b['other'] / mib:>8.1f} {b['total'] / mib:>10.1f} "
            f"{r['step_live_peak_bytes'] / mib:>9.1f} {r['live_total_peak_bytes'] / mib:>11.1f} "
            f"{r['setup_bytes'] / mib:>9.1f} {r['step_peak_bytes'] / mib:>9.1f} "
            f"{r['total_peak_bytes'] / mib:>9.1f} {r['step_seconds']:>7.2f} {r['loss']:>8.4f}"
        )
    q, f = results["nf4"], results["bf16"]
    ratios = {
        "linear_base_bytes": q["bytes"]["linear_base"] / f["bytes"]["linear_base"],
        "param_bytes": q["bytes"]["total"] / f["bytes"]["total"],
        "step_live_peak_bytes": q["step_live_peak_bytes"] / f["step_live_peak_bytes"],
        "live_total_peak_bytes": q["live_total_peak_bytes"] / f["live_total_peak_bytes"],
        "setup_rss_bytes": q["setup_bytes"] / f["setup_bytes"],
        "rss_total_peak_bytes": q["total_peak_bytes"] / f["total_peak_bytes"],
    }
    print("nf4 / bf16: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    if args.out:
        report = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(["uv run python benchmarks/qlora_memory.py", *base]),
            "machine": machine(),
            "load_average": load,
            "settings": {k: v for k, v in vars(args).items() if k not in ("variant", "out")},
            "results": results,
            "nf4_over_bf16": ratios,
        }
        with open(args.out, "w") as f_out:
            f_out.write(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
