"""Tokenize text corpora into a Megatron indexed dataset for pre-training.

automodel preprocess --input corpus.jsonl [--input more.parquet] --output-prefix data/corpus \
    --tokenizer TOKENIZER [--text-key text] [--workers 4]

Writes data/corpus.bin and data/corpus.idx (each document's tokens, EOS appended), which
`automodel.core.data.indexed_dataset` reads, as does megatron-core's `IndexedDataset`.
"""

from __future__ import annotations

import argparse
import os
import sys

from automodel.core.config import UserError
from automodel.core.data import preprocess_text

_PROG = "automodel preprocess"


def main(argv: list[str] | None = None) -> int:
    """Tokenize JSONL / parquet / text files or a `datasets` name into `.bin` + `.idx`."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Tokenize text into a Megatron indexed dataset (.bin + .idx) for "
        "pretrain llm's automodel.core.data.indexed_dataset.",
    )
    parser.add_argument("--input", "-i", action="append", required=True,
                        help="a JSONL, parquet, CSV or text file, a folder, or a datasets name; repeat for several")  # fmt: skip
    parser.add_argument("--output-prefix", "-o", required=True,
                        help="writes PREFIX.bin and PREFIX.idx")  # fmt: skip
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder or Hub name")
    parser.add_argument("--text-key", default="text", help="the column holding the text")
    parser.add_argument("--split", default="train", help="the split of a datasets name")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="tokenizing processes (default: CPUs - 1)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=1000, help="documents per task")
    parser.add_argument("--no-eos", action="store_true", help="do not append EOS per document")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    prefix = str(args.output_prefix).removesuffix(".bin").removesuffix(".idx")
    try:
        existing = [p for p in (prefix + ".bin", prefix + ".idx") if os.path.exists(p)]
        if existing and not args.overwrite:
            raise UserError(f"{' and '.join(existing)} exist; pass --overwrite to replace them")
        if args.workers < 1 or args.batch_size < 1:
            raise UserError("--workers and --batch-size must be at least 1")
        summary = preprocess_text(
            args.input, prefix, args.tokenizer, text_column=args.text_key, split=args.split,
            workers=args.workers, batch_size=args.batch_size, append_eos=not args.no_eos,
        )  # fmt: skip
    except UserError as e:
        if args.debug:
            raise
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {prefix}.bin and {prefix}.idx: {summary.documents:,} documents, "
        f"{summary.tokens:,} tokens ({summary.dtype}), {summary.skipped:,} empty texts skipped; "
        f"{summary.seconds:.1f} s, {summary.tokens_per_second:,.0f} tokens/s with "
        f"{args.workers} worker(s)"
    )
    return 0
