"""Tokenize text into a Megatron indexed dataset (`.bin` + `.idx`) with worker processes.

Documents are tokenized as `text_dataset` tokenizes them (the tokenizer's special tokens, EOS
appended), in input order whatever the number of workers, so the output is the same bytes for
the same input and tokenizer. Input is read as a stream and at most two batches per worker are
in flight, so memory stays flat in the corpus size.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..logging import ProgressBar
from ._errors import DataError
from ._indexed import token_dtype, write_indexed
from ._loading import stream_column

_worker_tokenizer: Any = None  # each worker process's own tokenizer


@dataclass(frozen=True)
class PreprocessSummary:
    """What `preprocess_text` wrote, and how fast."""

    documents: int
    tokens: int
    skipped: int  # empty texts
    seconds: float
    dtype: str

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def preprocess_text(
    inputs: Sequence[str | os.PathLike[str]],
    output_prefix: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str],
    *,
    text_column: str = "text",
    split: str = "train",
    workers: int = 1,
    batch_size: int = 1000,
    append_eos: bool = True,
    progress: bool = True,
) -> PreprocessSummary:
    """Tokenize the `text_column` of each input (JSONL, parquet, text files, a `datasets` name)
    with the tokenizer at `tokenizer`, into `output_prefix`.bin / .idx."""
    from automodel.core.models import load_tokenizer

    meta = load_tokenizer(tokenizer)
    eos = meta.eos_token_id if append_eos else None
    if append_eos and eos is None:
        raise DataError(f"{tokenizer}: the tokenizer has no EOS token; pass append_eos=False")
    dtype = token_dtype(len(meta))
    counts = {"skipped": 0}
    start = time.perf_counter()

    def batches() -> Iterator[list[str]]:
        for path in inputs:
            for texts in stream_column(path, text_column, split, batch_size=batch_size):
                kept = [t for t in texts if t]
                counts["skipped"] += len(texts) - len(kept)
                if kept:
                    yield kept

    bar = ProgressBar(desc="tokenizing", enabled=progress)

    def documents() -> Iterator[np.ndarray]:
        tokens = 0
        for encoded in _encoded(batches(), str(tokenizer), eos, workers):
            for ids in encoded:
                tokens += len(ids)
                yield ids
            bar.update(len(encoded), tokens=tokens)

    with bar:
        documents_written, tokens = write_indexed(output_prefix, documents(), dtype)
    return PreprocessSummary(
        documents_written,
        tokens,
        counts["skipped"],
        time.perf_counter() - start,
        np.dtype(dtype).name,
    )


def _encoded(
    batches: Iterator[list[str]], tokenizer: str, eos: int | None, workers: int
) -> Iterator[list[np.ndarray]]:
    """Each batch's token ids, in order: in this process, or `workers` processes with at most
    two batches each in flight."""
    if workers <= 1:
        _load_worker_tokenizer(tokenizer)
        for batch in batches:
            yield _encode(batch, eos)
        return
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with context.Pool(workers, initializer=_load_worker_tokenizer, initargs=(tokenizer,)) as pool:
        pending: deque[Any] = deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode, (batch, eos)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _load_worker_tokenizer(path: str) -> None:
    global _worker_tokenizer
    from automodel.core.models import load_tokenizer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the processes are the parallelism
    _worker_tokenizer = load_tokenizer(path)


def _encode(texts: list[str], eos: int | None) -> list[np.ndarray]:
    ids = _worker_tokenizer(texts, add_special_tokens=True)["input_ids"]
    tail = [eos] if eos is not None else []
    return [np.asarray([*i, *tail], dtype=np.int64) for i in ids]
