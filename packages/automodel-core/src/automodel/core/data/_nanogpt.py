"""Pre-training windows from NanoGPT / llm.c token shards (`.bin` files of a 256-int32 header and
the token ids), memory-mapped.

Two headers exist: llm.c's (magic 20240520, version 1, token count; ids are uint16) and
NanoGPT's data processor's (magic 278895051, version 1, token count, bytes per id: 2 or 4).
Each shard is cut into consecutive windows of `seq_len + 1` tokens (`seq_len` targets each),
one after the other, as NeMo AutoModel's and modded-nanogpt's readers do; windows do not cross
shards. With `align_to_bos` every window starts at a `bos_token`: after a window, the next one
starts at the first BOS after it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .._atomic import write_atomic
from ._errors import DataError, check_count

LLMC_MAGIC = 20240520  # llm.c / modded-nanogpt fineweb.py: uint16 ids
NANOGPT_MAGIC = 278895051  # NanoGPT's data processor: header[3] bytes per id
HEADER_INTS = 256


def read_shard(path: str | os.PathLike[str]) -> np.ndarray:
    """The token ids of one shard, memory-mapped (uint16 or uint32); a DataError naming the
    file when its header or size is not one of a shard."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_INTS * 4:
        raise DataError(f"{path}: {size} bytes, shorter than the 1024-byte header of a shard")
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    magic, version, count = (int(v) for v in header[:3])
    if magic == LLMC_MAGIC:
        dtype = np.dtype(np.uint16)
    elif magic == NANOGPT_MAGIC and int(header[3]) in (2, 4):
        dtype = np.dtype(np.uint16 if int(header[3]) == 2 else np.uint32)
    else:
        raise DataError(
            f"{path}: not a NanoGPT/llm.c token shard (magic {magic}, expected {LLMC_MAGIC} or "
            f"{NANOGPT_MAGIC} with 2 or 4 bytes per token)"
        )
    if version != 1:
        raise DataError(f"{path}: shard version {version}, only version 1 is known")
    expected = HEADER_INTS * 4 + count * dtype.itemsize
    if size != expected:
        raise DataError(
            f"{path}: the header says {count} tokens ({expected} bytes with it), the file has "
            f"{size} bytes: truncated or not a shard"
        )
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_INTS * 4, shape=(count,))


def write_shard(path: str | os.PathLike[str], tokens: Sequence[int] | np.ndarray) -> Path:
    """Write `tokens` as one shard, atomically: llm.c's header and uint16 ids when every id
    fits, else NanoGPT's with uint32 ids."""
    ids = np.asarray(tokens, dtype=np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() >= 2**32):
        raise DataError(f"token ids must be in [0, 2**32), got {ids.min()}..{ids.max()}")
    wide = bool(len(ids)) and int(ids.max()) >= 2**16
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:4] = (NANOGPT_MAGIC, 1, len(ids), 4) if wide else (LLMC_MAGIC, 1, len(ids), 0)
    body = ids.astype(np.uint32 if wide else np.uint16).tobytes()
    return write_atomic(path, lambda tmp: tmp.write_bytes(header.tobytes() + body))


class NanogptWindows(Dataset):
    """`seq_len + 1`-token windows of NanoGPT / llm.c shards; `input_ids` and (unshifted)
    `labels` per sample, as `indexed_dataset`'s."""

    def __init__(
        self,
        paths: Sequence[str],
        seq_len: int,
        bos_token: int | None = None,
        align_to_bos: bool = False,
    ) -> None:
        check_count("nanogpt_dataset", "seq_len", seq_len)
        if align_to_bos and bos_token is None:
            raise DataError("nanogpt_dataset: align_to_bos needs bos_token (the BOS token id)")
        self.paths, self.seq_len = list(paths), seq_len
        self.shards = [read_shard(p) for p in self.paths]
        starts = [_starts(s, seq_len, bos_token if align_to_bos else None) for s in self.shards]
        self.shard_of = np.concatenate(
            [np.full(len(s), i, dtype=np.int32) for i, s in enumerate(starts)]
        )
        self.start_of = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        if not len(self.start_of):
            raise DataError(
                f"nanogpt_dataset: no window of {seq_len + 1} tokens in {', '.join(self.paths)}"
            )

    def __len__(self) -> int:
        return len(self.start_of)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        shard, start = self.shards[int(self.shard_of[index])], int(self.start_of[index])
        ids = torch.from_numpy(shard[start : start + self.seq_len + 1].astype(np.int64))
        return {"input_ids": ids, "labels": ids.clone()}


def _starts(tokens: np.ndarray, seq_len: int, bos: int | None) -> np.ndarray:
    """Where each window of one shard starts."""
    if bos is None:
        return np.arange(0, len(tokens) - seq_len, seq_len + 1, dtype=np.int64)
    boundaries = np.flatnonzero(tokens == bos)
    starts, position = [], 0
    while True:
        at = int(np.searchsorted(boundaries, position))
        if at == len(boundaries) or boundaries[at] + seq_len + 1 > len(tokens):
            return np.array(starts, dtype=np.int64)
        starts.append(int(boundaries[at]))
        position = starts[-1] + seq_len + 1


def nanogpt_dataset(
    file_pattern: str | Sequence[str],
    seq_len: int,
    *,
    bos_token: int | None = None,
    align_to_bos: bool = False,
    shuffle_files: bool = False,
    seed: int = 0,
    tokenizer: Any = None,
) -> NanogptWindows:
    """Windows of `seq_len + 1` tokens (`seq_len` targets) from NanoGPT / llm.c `.bin` token
    shards: a glob pattern or a list of files, read in sorted order (`shuffle_files`: in an
    order drawn from `seed`). `tokenizer` (given by the recipes) is checked against the first
    shard's ids."""
    patterns = [file_pattern] if isinstance(file_pattern, str | os.PathLike) else file_pattern
    paths = sorted({p for pattern in patterns for p in glob.glob(os.path.expanduser(str(pattern)))})
    if not paths:
        raise DataError(f"nanogpt_dataset: no file matches {file_pattern!r}")
    if shuffle_files:
        paths = [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))]
    windows = NanogptWindows(paths, seq_len, bos_token, align_to_bos)
    if tokenizer is not None and len(windows.shards[0]):
        top, vocabulary = int(windows.shards[0].max()), len(tokenizer)
        if top >= vocabulary:
            raise DataError(
                f"{paths[0]} holds token id {top}, beyond the tokenizer's {vocabulary} ids: "
                "the shards were tokenized with another tokenizer"
            )
    return windows
