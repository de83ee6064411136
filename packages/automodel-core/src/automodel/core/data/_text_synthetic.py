"""Synthetic token rows: random ids for timing or smoke-testing a text model's training steps
without any data (nothing is read, tokenized or downloaded)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ._errors import DataError, check_count


class SyntheticTextRows(Dataset):
    """`num_samples` rows of random token ids, each built from its own seed when read (the same
    row for the same index and seed, in any order, nothing held in memory). Labels are the ids:
    every token but the first is a target, as in a document of pretraining text."""

    num_truncated = num_dropped = num_chunked = 0  # as a tokenized dataset's counts: none

    def __init__(
        self,
        num_samples: int,
        seq_length: int,
        length_std: float,
        max_length: int,
        vocab_size: int,
        eos_token_id: int | None,
        pad_token_id: int,
        seed: int,
    ):
        self.num_samples, self.seq_length = num_samples, seq_length
        self.length_std, self.max_length = length_std, max_length
        self.vocab_size, self.eos_token_id = vocab_size, eos_token_id
        self.pad_token_id, self.seed = pad_token_id, seed

    def __len__(self) -> int:
        return self.num_samples

    def _length(self, rng: np.random.Generator) -> int:
        if not self.length_std:
            return self.seq_length
        drawn = round(rng.normal(self.seq_length, self.length_std))
        return int(min(max(drawn, 1), self.max_length))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample index {index} out of range for {self.num_samples} samples")
        rng = np.random.default_rng([self.seed, index])
        ids = rng.integers(0, self.vocab_size, self._length(rng), dtype=np.int64)
        if self.eos_token_id is not None:
            ids[-1] = self.eos_token_id  # each row one document, ended as text would be
        tokens = torch.from_numpy(ids)
        return {"input_ids": tokens, "labels": tokens.clone()}

    def lengths(self) -> torch.Tensor:
        """The number of tokens of each row (for packing)."""
        if not self.length_std:
            return torch.full((self.num_samples,), self.seq_length, dtype=torch.long)
        return torch.tensor(
            [self._length(np.random.default_rng([self.seed, i])) for i in range(self.num_samples)]
        )


def synthetic_text_dataset(
    tokenizer: Any = None,
    *,
    num_samples: int = 1000,
    seq_length: int = 1024,
    length_std: float = 0.0,
    max_length: int | None = None,
    vocab_size: int | None = None,
    seed: int = 0,
) -> SyntheticTextRows:
    """Rows of random token ids in [0, `vocab_size`) (default: the tokenizer's vocabulary),
    `seq_length` tokens each, or lengths drawn from a normal of that mean and `length_std`
    (within 1..`max_length`, default 4 standard deviations above), ended by the tokenizer's
    EOS: items as the text datasets', for timing fine-tuning steps or packing without data."""
    where = "synthetic_text_dataset"
    check_count(where, "num_samples", num_samples)
    check_count(where, "seq_length", seq_length)
    if isinstance(length_std, bool) or not isinstance(length_std, (int, float)) or length_std < 0:
        raise DataError(f"{where}: length_std must be >= 0, got {length_std!r}")
    longest = seq_length + math.ceil(4 * length_std) if max_length is None else max_length
    check_count(where, "max_length", longest)
    vocab = vocab_size if vocab_size is not None else (len(tokenizer) if tokenizer else None)
    if vocab is None:
        raise DataError(f"{where}: give vocab_size (no tokenizer to take it from)")
    check_count(where, "vocab_size", vocab, minimum=2)
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    return SyntheticTextRows(
        num_samples, seq_length, float(length_std), longest, vocab,
        eos if eos is not None and eos < vocab else None, pad if pad is not None else 0, seed,
    )  # fmt: skip
