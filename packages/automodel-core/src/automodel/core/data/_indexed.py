"""Megatron's indexed dataset format: a `.bin` file of token ids and an `.idx` file indexing it.

The `.idx` layout (version 1, as megatron-core's `IndexedDataset` reads and writes it), all
little-endian:

    b"MMIDIDX\\x00\\x00"   9 bytes, the header
    version              uint64, 1
    dtype code           uint8: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64,
                         7 float32, 8 uint16 (the token ids' type in `.bin`)
    sequence count       uint64, S
    document count       uint64, D + 1
    sequence lengths     int32[S], tokens per sequence
    sequence pointers    int64[S], byte offset of each sequence in `.bin`
    document indices     int64[D + 1], the first sequence of each document, then S
    sequence modes       int8[S], only in multimodal datasets (read past, unused here)

The index is memory-mapped and token ids are read with `pread` when a sequence is asked for,
so a process holds the tokens it asked for and no mapped page of the corpus. Writing streams
documents to `.bin` and their lengths to a temporary file, so memory stays flat in the corpus
size; both files appear under their final names only when complete.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import write_atomic
from ._errors import DataError

HEADER = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPES: dict[int, type[np.generic]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_CODES = {np.dtype(dtype): code for code, dtype in DTYPES.items()}
_FIXED = struct.Struct("<9sQBQQ")  # header, version, dtype code, sequence and document counts
_CHUNK = 1 << 20  # index entries handled at a time when writing


def paths_of(prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The `.bin` and `.idx` files of a dataset prefix (`corpus` -> corpus.bin, corpus.idx)."""
    prefix = str(prefix)
    for suffix in (".bin", ".idx"):
        prefix = prefix.removesuffix(suffix)
    return Path(prefix + ".bin"), Path(prefix + ".idx")


def token_dtype(vocab_size: int) -> type[np.generic]:
    """The smallest type that holds every token id of a vocabulary: uint16, else int32."""
    return np.uint16 if vocab_size <= 65536 else np.int32


class IndexedTokens:
    """A Megatron indexed dataset opened read-only: `tokens[i]` is sequence i's token ids,
    `document_indices` groups sequences into documents."""

    def __init__(self, prefix: str | os.PathLike[str]):
        self.prefix = prefix
        self.bin_path, self.idx_path = paths_of(prefix)
        for path in (self.bin_path, self.idx_path):
            if not path.is_file():
                raise DataError(
                    f"indexed dataset {prefix}: {path} does not exist (an indexed dataset is a "
                    f".bin and an .idx file with the same prefix; `automodel preprocess` writes them)"
                )
        size = self.idx_path.stat().st_size
        with open(self.idx_path, "rb") as f:
            fixed = f.read(_FIXED.size)
        if len(fixed) < _FIXED.size or fixed[: len(HEADER)] != HEADER:
            raise DataError(f"{self.idx_path}: not a Megatron index file (no {HEADER!r} header)")
        _, version, code, sequences, documents = _FIXED.unpack(fixed)
        if version != VERSION:
            raise DataError(f"{self.idx_path}: index version {version}; version {VERSION} is read")
        if code not in DTYPES:
            raise DataError(f"{self.idx_path}: unknown dtype code {code} (known: {sorted(DTYPES)})")
        self.dtype = np.dtype(DTYPES[code])
        needed = _FIXED.size + sequences * (4 + 8) + documents * 8
        if size < needed:
            raise DataError(
                f"{self.idx_path}: {size} bytes, but its header promises {sequences} sequences "
                f"and {documents} document indices ({needed} bytes): the file is truncated"
            )
        index = np.memmap(self.idx_path, mode="r", dtype=np.uint8)
        offset = _FIXED.size
        self.sequence_lengths = index[offset : offset + 4 * sequences].view(np.int32)
        offset += 4 * sequences
        self.sequence_pointers = index[offset : offset + 8 * sequences].view(np.int64)
        offset += 8 * sequences
        self.document_indices = index[offset : offset + 8 * documents].view(np.int64)
        self.num_tokens = int(self.bin_path.stat().st_size // self.dtype.itemsize)
        self._fd: int | None = None  # opened on first read, in the process that reads
        if sequences and (
            int(self.sequence_pointers[-1]) // self.dtype.itemsize + int(self.sequence_lengths[-1])
            > self.num_tokens
        ):
            raise DataError(
                f"{self.bin_path}: shorter than its index says ({self.num_tokens} tokens): the "
                f".bin and .idx files do not belong together, or the .bin is truncated"
            )

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        """Documents (each one or more sequences)."""
        return max(len(self.document_indices) - 1, 0)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.tokens(index, 0, int(self.sequence_lengths[index]))

    def tokens(self, index: int, offset: int, length: int) -> np.ndarray:
        """Up to `length` tokens of sequence `index` from `offset`, never past its end."""
        length = min(length, int(self.sequence_lengths[index]) - offset)
        if self._fd is None:
            self._fd = os.open(self.bin_path, os.O_RDONLY)
        start = int(self.sequence_pointers[index]) + offset * self.dtype.itemsize
        data = os.pread(self._fd, length * self.dtype.itemsize, start)
        return np.frombuffer(data, dtype=self.dtype)

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return type(self), (self.prefix,)  # reopened where unpickled (a dataloader worker)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


def write_indexed(
    prefix: str | os.PathLike[str],
    documents: Iterable[np.ndarray | list[int]],
    dtype: type[np.generic] | np.dtype = np.int32,
) -> tuple[int, int]:
    """Write `documents` (each one sequence of token ids) as `prefix`.bin / `prefix`.idx, both
    atomically; return (documents, tokens). An existing dataset is replaced only when done."""
    dtype = np.dtype(dtype)
    if dtype not in _CODES:
        raise ValueError(f"dtype {dtype} has no code in the format (one of {list(_CODES)})")
    bin_path, idx_path = paths_of(prefix)
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    counts = [0, 0]
    with tempfile.TemporaryFile(dir=bin_path.parent) as lengths:

        def write_bin(tmp: Path) -> None:
            with open(tmp, "wb") as out:
                for document in documents:
                    array = np.asarray(document)
                    if array.size and (array.min() < 0 or array.max() > _max_of(dtype)):
                        raise DataError(
                            f"document {counts[0]}: token ids up to {int(array.max())} do not "
                            f"fit {dtype}; write with a wider dtype"
                        )
                    out.write(array.astype(dtype, copy=False).tobytes())
                    lengths.write(np.int32(array.size).tobytes())
                    counts[0] += 1
                    counts[1] += array.size

        write_atomic(bin_path, write_bin)
        write_atomic(idx_path, lambda tmp: _write_index(tmp, lengths, counts[0], dtype))
    return counts[0], counts[1]


def _write_index(path: Path, lengths_file: object, sequences: int, dtype: np.dtype) -> None:
    """The `.idx` file of `sequences` one-sequence documents whose lengths are in `lengths_file`."""
    with open(path, "wb") as out:
        out.write(_FIXED.pack(HEADER, VERSION, _CODES[dtype], sequences, sequences + 1))
        for chunk in _chunks(lengths_file):
            out.write(chunk.tobytes())
        carry = 0
        for chunk in _chunks(lengths_file):
            ends = np.cumsum(chunk, dtype=np.int64) * dtype.itemsize + carry
            out.write((ends - chunk.astype(np.int64) * dtype.itemsize).tobytes())
            carry = int(ends[-1])
        for start in range(0, sequences + 1, _CHUNK):
            stop = min(start + _CHUNK, sequences + 1)
            out.write(np.arange(start, stop, dtype=np.int64).tobytes())


def _chunks(lengths_file: object) -> Iterable[np.ndarray]:
    """The int32 lengths written so far, `_CHUNK` at a time, from the start of the file."""
    lengths_file.seek(0)  # type: ignore[attr-defined]
    while chunk := lengths_file.read(4 * _CHUNK):  # type: ignore[attr-defined]
        yield np.frombuffer(chunk, dtype=np.int32)


def _max_of(dtype: np.dtype) -> float:
    return np.iinfo(dtype).max if dtype.kind in "iu" else np.finfo(dtype).max
