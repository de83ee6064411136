"""Checkpoint save cost for a ~0.5B-parameter Llama on CPU: sync save vs the step stall of async.

Run by hand (not part of the tests):

    uv run python benchmarks/checkpoint_save.py                 # ~0.47B params, float32, AdamW
    uv run python benchmarks/checkpoint_save.py --layers 4      # quicker

Builds a randomly initialised Llama (hidden 1024, 24 layers, intermediate 4096, vocab 32000,
untied LM head) in float32, populates the AdamW state with one training step, then times:

- ``sync``: ``Checkpointer.save`` from call to return (everything written, fsynced, published);
- ``async`` (``--async-saves`` in a row): the stall (``save()`` returns after snapshotting to
  CPU memory) and the background write (from that return until ``wait()`` returns: written
  and published). The first snapshot pays for fresh pages; later ones reuse freed memory;
- ``restore``: ``Checkpointer.restore`` of the model, optimizer and LR scheduler.

Checkpoints go to a temporary folder under ``--tmp`` (default /tmp) and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import transformers

from automodel.checkpoint import Checkpointer, read_checkpoint_info

RESULTS = Path(__file__).with_name("results") / "checkpoint_save.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--intermediate", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--async-saves", type=int, default=3, help="async saves in a row")
    parser.add_argument("--tmp", default="/tmp", help="where the temporary checkpoints go")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def llama_param_count(hidden: int, layers: int, intermediate: int, vocab: int) -> int:
    """Parameters of a Llama with full-size K/V heads and an untied LM head."""
    attention = 4 * hidden * hidden
    mlp = 3 * hidden * intermediate
    norms = 2 * hidden
    return layers * (attention + mlp + norms) + 2 * vocab * hidden + hidden


def build(args: argparse.Namespace):
    """The model, AdamW with populated state (one step) and an LR scheduler."""
    config = transformers.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, 100)
    ids = torch.randint(0, args.vocab, (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer, scheduler


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    expected = llama_param_count(args.hidden, args.layers, args.intermediate, args.vocab)
    t0 = time.perf_counter()
    model, optimizer, scheduler = build(args)
    params = sum(p.numel() for p in model.parameters())
    assert params == expected, (params, expected)
    print(f"model: {params / 1e9:.3f}B parameters, built in {time.perf_counter() - t0:.1f} s")
    states = {
        "model": model,
        "optimizer": optimizer,
        "optim_states": {"lr_scheduler": scheduler},
    }

    root = Path(tempfile.mkdtemp(prefix="checkpoint_bench_", dir=args.tmp))
    try:
        sync = Checkpointer(root / "sync", max_shard_size=args.max_shard_size)
        start = time.perf_counter()
        path = sync.save(0, 1, **states)
        sync_s = time.perf_counter() - start
        info = read_checkpoint_info(path)
        parts: dict[str, int] = {}
        for rel, size in info.files.items():
            parts[rel.split("/", 1)[0]] = parts.get(rel.split("/", 1)[0], 0) + size

        start = time.perf_counter()
        sync.restore(path, **states)
        restore_s = time.perf_counter() - start
        shutil.rmtree(root / "sync")

        stalls: list[float] = []
        backgrounds: list[float] = []
        with Checkpointer(
            root / "async", async_save=True, max_shard_size=args.max_shard_size
        ) as ac:
            for step in range(1, args.async_saves + 1):
                start = time.perf_counter()
                ac.save(0, step, **states)
                stalls.append(time.perf_counter() - start)
                ac.wait()
                backgrounds.append(time.perf_counter() - start - stalls[-1])
                shutil.rmtree(root / "async" / f"epoch_0_step_{step - 1}", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows = [("sync save (blocks training)", sync_s)]
    for i, (stall, background) in enumerate(zip(stalls, backgrounds, strict=True), 1):
        rows.append((f"async save #{i}: step stall", stall))
        rows.append((f"async save #{i}: background write", background))
    rows.append(("restore (model + optimizer + scheduler)", restore_s))
    total = info.total_bytes
    sizes = ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in parts.items())
    print(f"checkpoint: {total / 1e9:.2f} GB ({sizes})")
    print(f"| {'measurement':<42} | {'seconds':>8} | {'GB/s':>6} |")
    print(f"|{'-' * 44}|{'-' * 10}|{'-' * 8}|")
    for name, seconds in rows:
        print(f"| {name:<42} | {seconds:>8.2f} | {total / 1e9 / seconds:>6.2f} |")

    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_1m": os.getloadavg()[0],
        },
        "spec": {
            "hidden": args.hidden,
            "layers": args.layers,
            "intermediate": args.intermediate,
            "vocab": args.vocab,
            "parameters": params,
            "dtype": "float32",
            "optimizer": "AdamW (exp_avg, exp_avg_sq, step)",
            "max_shard_size": args.max_shard_size,
            "tmp": args.tmp,
        },
        "bytes": {"total": total, **parts},
        "seconds": {
            "sync_save": sync_s,
            "async_stall": stalls,
            "async_background": backgrounds,
            "restore": restore_s,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
