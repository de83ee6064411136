"""Pre-training data pipeline: what the indexed loader delivers, what it costs in memory, and how
fast `automodel preprocess` tokenizes.

    uv run python benchmarks/data_pipeline.py --workdir /tmp/data_bench \
        --out benchmarks/results/data_pipeline.json

1. Loader throughput: tokens/s that `build_dataloader` over `indexed_dataset` (a 70/30 blend,
   4096-token windows, batch 8, no workers) hands to a training loop, in a fresh process per
   corpus, timed over `--batches` batches after the first.
2. Memory: the process's RSS growth from before the dataset is opened to after those batches,
   for a 20 MB and a 2 GB corpus (random token ids, log-normal document lengths); the goal is
   under 100 MB more for the 2 GB corpus than for the 20 MB one.
3. Preprocessing: `preprocess_text` tokens/s with 1 and 2 workers on generated text, with the
   retrieval example's WordPiece tokenizer.

The corpora are generated once into `--workdir` and reused.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TOKENIZER = HERE.parent / "examples/retrieval/assets/tokenizer"
SEQ, BATCH = 4096, 8


def make_corpus(prefix: Path, tokens: int, seed: int) -> None:
    """A corpus of about `tokens` random uint16 ids in documents of log-normal lengths."""
    from automodel.core.data import write_indexed

    if prefix.with_suffix(".idx").exists():
        return
    rng = np.random.default_rng(seed)

    def documents():
        written = 0
        while written < tokens:
            lengths = np.clip(rng.lognormal(6.5, 1.0, 4096).astype(np.int64), 16, 65536)
            block = rng.integers(0, 32000, int(lengths.sum()), dtype=np.uint16)
            yield from np.split(block, np.cumsum(lengths)[:-1])
            written += int(lengths.sum())

    write_indexed(prefix, documents(), np.uint16)


def loader_run(prefixes: list[str], batches: int, cache: str) -> dict[str, float]:
    """In this (fresh) process: RSS before opening, tokens/s over `batches`, RSS after."""
    sys.path.insert(0, str(HERE))
    from _process_memory import current_rss, trim_heap

    from automodel.core.data import build_dataloader, indexed_dataset

    trim_heap()
    before = current_rss()
    start = time.perf_counter()
    dataset = indexed_dataset([0.7, prefixes[0], 0.3, prefixes[1]], SEQ, index_cache_dir=cache)
    opened = time.perf_counter() - start
    loader = build_dataloader(dataset, BATCH, shuffle=False)
    batches_iter = iter(loader)
    next(batches_iter)
    start = time.perf_counter()
    tokens = 0
    for _ in range(batches):
        tokens += next(batches_iter)["input_ids"].numel()
    seconds = time.perf_counter() - start
    return {
        "open_seconds": opened,
        "samples": len(dataset),
        "tokens_per_second": tokens / seconds,
        "rss_growth_mb": (current_rss() - before) / 2**20,
    }


def loader_in_subprocess(prefixes: list[Path], batches: int, cache: Path) -> dict[str, float]:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import data_pipeline as d; "
        "print(json.dumps(d.loader_run(sys.argv[2:4], int(sys.argv[4]), sys.argv[5])))"
    )
    argv = [sys.executable, "-c", code, str(HERE), *map(str, prefixes), str(batches), str(cache)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def preprocess_rates(workdir: Path, documents: int) -> dict[int, dict[str, float]]:
    """tokens/s of preprocess_text with 1 and 2 workers on generated text."""
    from automodel.core.data import preprocess_text

    words = [w for w in json.loads((TOKENIZER / "tokenizer.json").read_text())["model"]["vocab"] if w.isalpha()]  # fmt: skip
    source = workdir / "text.jsonl"
    if not source.exists():
        rng = np.random.default_rng(0)
        with open(source, "w") as f:
            for _ in range(documents):
                n = int(np.clip(rng.lognormal(5.5, 0.8), 10, 4000))
                f.write(json.dumps({"text": " ".join(rng.choice(words, n))}) + "\n")
    out = {}
    for workers in (1, 2):
        summary = preprocess_text(
            [source],
            workdir / f"text_w{workers}",
            TOKENIZER,
            workers=workers,
            progress=False,
            append_eos=False,  # a BERT tokenizer has no EOS
        )
        out[workers] = {
            "tokens": summary.tokens,
            "seconds": summary.seconds,
            "tokens_per_second": summary.tokens_per_second,
            "tokens_per_second_per_worker": summary.tokens_per_second / workers,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/data_bench"))
    parser.add_argument("--big-gb", type=float, default=2.0)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--documents", type=int, default=20000, help="texts to preprocess")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = {"20MB": 10_000_000, f"{args.big_gb:g}GB": int(args.big_gb * 2**30 / 2)}
    results: dict = {
        "machine": platform.processor() or platform.machine(),
        "seq": SEQ,
        "batch": BATCH,
    }
    for name, tokens in sizes.items():
        prefixes = [args.workdir / f"{name}_a", args.workdir / f"{name}_b"]
        for i, prefix in enumerate(prefixes):
            make_corpus(prefix, int(tokens * (0.7, 0.3)[i]), seed=i)
        disk = sum(p.with_suffix(s).stat().st_size for p in prefixes for s in (".bin", ".idx"))
        cache = args.workdir / f"{name}_cache"
        first = loader_in_subprocess(prefixes, args.batches, cache)  # builds the cache
        again = loader_in_subprocess(prefixes, args.batches, cache)  # reads it
        results[name] = {"disk_mb": disk / 2**20, "first_start": first, "cached_start": again}
        print(
            f"{name}: {disk / 2**20:,.0f} MB on disk, opened in {first['open_seconds']:.2f} s "
            f"(cached: {again['open_seconds']:.2f} s); {again['tokens_per_second']:,.0f} tokens/s; "
            f"RSS +{again['rss_growth_mb']:.1f} MB (first start +{first['rss_growth_mb']:.1f} MB)"
        )
    results["preprocess"] = preprocess_rates(args.workdir, args.documents)
    for workers, rate in results["preprocess"].items():
        print(
            f"preprocess, {workers} worker(s): {rate['tokens']:,} tokens in {rate['seconds']:.1f} s, "
            f"{rate['tokens_per_second']:,.0f} tokens/s ({rate['tokens_per_second_per_worker']:,.0f} per worker)"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
