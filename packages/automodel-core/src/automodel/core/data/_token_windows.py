"""Pre-training samples from Megatron indexed datasets: fixed-length token windows over the
documents, and weighted blends of several datasets with exact proportions.

A dataset's documents (those of its `split` part) are put in a seeded random order and read as
one stream of tokens; sample i is tokens [i(L-1), i(L-1) + L) of that stream for
`seq_length` L. Consecutive samples share one token, so every token but the stream's first is
a target exactly once (the labels here are unshifted: this is Megatron's `seq_length + 1`
windows). The samples are then put in a seeded random order too. Both orders, and a blend's
interleaving, are cached as `.npy` files (`index_cache_dir`, by default beside the data), so
a restart memory-maps them instead of building them again.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .._atomic import write_atomic
from ._errors import DataError
from ._indexed import IndexedTokens

log = logging.getLogger("automodel.core.data")

PARTS = ("train", "validation", "test")


class TokenWindows(Dataset):
    """`seq_length`-token samples of one indexed dataset's documents (one part of its split)."""

    def __init__(
        self,
        prefix: str | os.PathLike[str],
        seq_length: int,
        *,
        split: str | None = None,
        part: str = "train",
        seed: int = 0,
        index_cache_dir: str | os.PathLike[str] | None = None,
    ):
        self._args = (prefix, seq_length)
        self._kwargs = {
            "split": split,
            "part": part,
            "seed": seed,
            "index_cache_dir": index_cache_dir,
        }
        if seq_length < 2:
            raise DataError(f"seq_length must be at least 2 (a token and its target), got {seq_length}")  # fmt: skip
        self.source = IndexedTokens(prefix)
        self.seq_length = seq_length
        first, last = _part_range(split, part, self.source.num_documents, prefix)
        docs = self.source.document_indices
        sequences = (int(docs[first]), int(docs[last])) if self.source.num_documents else (0, 0)
        key = {
            "idx": str(self.source.idx_path.resolve()),
            "idx_bytes": self.source.idx_path.stat().st_size,
            "idx_mtime_ns": self.source.idx_path.stat().st_mtime_ns,
            "sequences": sequences,
            "seq_length": seq_length,
            "seed": seed,
        }
        self.key = key  # what the cached orders depend on
        cache = _Cache(index_cache_dir, self.source.idx_path, key)
        self.order = cache.array("order", lambda: _shuffled(np.arange(*sequences), seed))
        self.ends = cache.array(
            "ends", lambda: np.cumsum(self.source.sequence_lengths[self.order], dtype=np.int64)
        )
        total = int(self.ends[-1]) if len(self.ends) else 0
        count = max((total - 1) // (seq_length - 1), 0)
        if count == 0:
            raise DataError(
                f"indexed dataset {prefix} ({part} part): {total} tokens, not enough for one "
                f"sample of seq_length={seq_length}"
            )
        self.samples = cache.array("samples", lambda: _shuffled(np.arange(count), seed + 1))

    def __len__(self) -> int:
        return len(self.samples)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # rebuilt from the cache where unpickled (a dataloader worker), not copied array by array
        return functools.partial(TokenWindows, **self._kwargs), self._args

    def window(self, index: int) -> np.ndarray:
        """The token ids of sample `index`."""
        start = int(self.samples[index]) * (self.seq_length - 1)
        position = int(np.searchsorted(self.ends, start, side="right"))
        offset = start - (int(self.ends[position - 1]) if position else 0)
        pieces, needed = [], self.seq_length
        while needed:
            sequence = int(self.order[position])
            piece = self.source.tokens(sequence, offset, needed)
            pieces.append(piece)
            needed -= len(piece)
            position, offset = position + 1, 0
        return np.concatenate(pieces) if len(pieces) > 1 else np.array(pieces[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(self.window(index).astype(np.int64))
        return {"input_ids": ids, "labels": ids.clone()}


class BlendedWindows(Dataset):
    """Samples of several datasets interleaved by weight: in every prefix of the blend each
    dataset's share is within one sample of its weight. A dataset asked for more samples than
    it has starts over (each pass in the same order)."""

    def __init__(
        self,
        datasets: Sequence[TokenWindows],
        weights: Sequence[float],
        size: int | None = None,
        *,
        index_cache_dir: str | os.PathLike[str] | None = None,
    ):
        self._args = (list(datasets), list(weights), size)
        self._kwargs = {"index_cache_dir": index_cache_dir}
        weights = np.asarray(weights, dtype=np.float64)
        weights = weights / weights.sum()
        self.datasets = list(datasets)
        self.weights = weights
        size = sum(len(d) for d in datasets) if size is None else size
        key = {
            "datasets": [d.key for d in datasets],
            "weights": weights.tolist(),
            "size": size,
        }
        cache = _Cache(index_cache_dir, datasets[0].source.idx_path, key)
        self.dataset_index = cache.array("blend", lambda: _interleave(weights, size))
        self.sample_index = cache.array(
            "blend_samples", lambda: _positions_within(self.dataset_index, len(weights))
        )

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return functools.partial(BlendedWindows, **self._kwargs), self._args

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        dataset = self.datasets[int(self.dataset_index[index])]
        return dataset[int(self.sample_index[index]) % len(dataset)]


def indexed_dataset(
    paths: str | Sequence[Any],
    seq_length: int,
    *,
    split: str | None = None,
    part: str = "train",
    seed: int = 0,
    num_samples: int | None = None,
    index_cache_dir: str | None = None,
    tokenizer: Any = None,
) -> TokenWindows | BlendedWindows:
    """Pre-training samples of `seq_length` tokens from Megatron indexed datasets (`.bin` +
    `.idx`, by prefix): one path, or a blend `[0.7, corpus_a, 0.3, corpus_b]` (a list of paths
    without weights blends them by size; a glob pattern such as `data/shard_*` is the sorted
    prefixes of the files it matches). `split: "969,30,1"` cuts each dataset's documents into
    train / validation / test parts (`part` picks one). A blend has `num_samples` samples
    (default: as many as its datasets hold). `tokenizer` (given by the recipes) is checked
    against the token ids of each dataset's first sequence."""
    if part not in PARTS:
        raise DataError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    weights, prefixes = _blend(paths)
    datasets = [
        TokenWindows(
            p, seq_length, split=split, part=part, seed=seed, index_cache_dir=index_cache_dir
        )
        for p in prefixes
    ]
    if tokenizer is not None:
        for dataset in datasets:
            _check_vocabulary(dataset.source, tokenizer)
    if len(datasets) == 1 and num_samples is None:
        return datasets[0]
    if weights is None:
        weights = [len(d) for d in datasets]
    blend = BlendedWindows(datasets, weights, num_samples, index_cache_dir=index_cache_dir)
    shares = ", ".join(f"{w:.3f} {p}" for w, p in zip(blend.weights, prefixes, strict=True))
    log.info("indexed data: %d samples of %d tokens blended from %s", len(blend), seq_length, shares)  # fmt: skip
    return blend


def _blend(paths: str | Sequence[Any]) -> tuple[list[float] | None, list[str]]:
    """(weights or None, prefixes) of `paths`: a prefix, prefixes, or weight, prefix, ... pairs."""
    if isinstance(paths, str | os.PathLike):
        return None, _expand(str(paths))
    items = list(paths)
    if not items:
        raise DataError("paths is empty: give a dataset prefix, or [weight, prefix, ...]")
    if all(isinstance(p, str | os.PathLike) for p in items):
        return None, [prefix for p in items for prefix in _expand(str(p))]
    pairs = items[0::2], items[1::2]
    if (
        len(items) % 2
        or not all(isinstance(w, int | float) and not isinstance(w, bool) for w in pairs[0])
        or not all(isinstance(p, str | os.PathLike) for p in pairs[1])
    ):
        raise DataError(
            f"paths: expected a prefix, a list of prefixes, or weight, prefix pairs "
            f"([0.7, corpus_a, 0.3, corpus_b]); got {items!r}"
        )
    globbed = [p for p in pairs[1] if glob.has_magic(str(p))]
    if globbed:
        raise DataError(f"paths: a weight applies to one prefix, not a pattern ({globbed[0]!r})")
    if any(w <= 0 for w in pairs[0]):
        raise DataError(f"paths: every weight must be > 0, got {list(pairs[0])}")
    return [float(w) for w in pairs[0]], [str(p) for p in pairs[1]]


def _expand(path: str) -> list[str]:
    """`path` itself, or for a glob pattern the dataset prefixes of the files it matches."""
    if not glob.has_magic(path):
        return [path]
    files = glob.glob(os.path.expanduser(path))
    prefixes = sorted({f.removesuffix(".bin").removesuffix(".idx") for f in files if f.endswith((".bin", ".idx"))})  # fmt: skip
    if not prefixes:
        raise DataError(f"paths: no .bin/.idx files match the pattern {path!r}")
    return prefixes


def _part_range(split: str | None, part: str, documents: int, prefix: Any) -> tuple[int, int]:
    """The documents [first, last) of `part` under a split string such as "969,30,1"."""
    if split is None:
        if part != "train":
            raise DataError(
                f'indexed dataset {prefix}: part {part!r} needs a split (e.g. split: "969,30,1"), '
                "or give the validation data its own paths"
            )
        return 0, documents
    try:
        shares = [float(s) for s in str(split).replace("/", ",").split(",")]
    except ValueError:
        shares = []
    if not 1 <= len(shares) <= 3 or any(s < 0 for s in shares) or sum(shares) <= 0:
        raise DataError(f"split: expected up to three non-negative shares such as \"969,30,1\", got {split!r}")  # fmt: skip
    shares += [0.0] * (3 - len(shares))
    bounds = np.round(np.cumsum([0.0, *shares]) / sum(shares) * documents).astype(int)
    index = PARTS.index(part)
    first, last = int(bounds[index]), int(bounds[index + 1])
    if first == last:
        raise DataError(
            f"indexed dataset {prefix}: split {split!r} leaves the {part} part none of its "
            f"{documents} documents"
        )
    return first, last


def _check_vocabulary(source: IndexedTokens, tokenizer: Any) -> None:
    """A corpus tokenized with a larger vocabulary than the model's is refused early."""
    if len(source) == 0:
        return
    vocabulary = len(tokenizer)
    top = int(np.max(source[0])) if len(source[0]) else 0
    if top >= vocabulary:
        raise DataError(
            f"{source.bin_path}: token id {top} in its first document, but the tokenizer has "
            f"{vocabulary} tokens: the corpus was tokenized with another tokenizer"
        )


def _shuffled(values: np.ndarray, seed: int) -> np.ndarray:
    np.random.default_rng(seed).shuffle(values)
    return values


def _interleave(weights: np.ndarray, size: int) -> np.ndarray:
    """Which dataset each of `size` positions reads: dataset i's k-th sample sits at time
    (k + 1/2) / weight_i, and positions follow time (so every prefix is within one sample)."""
    counts = np.floor(weights * size).astype(np.int64)
    for i in np.argsort(-(weights * size - counts))[: size - counts.sum()]:
        counts[i] += 1  # the largest remainders take the positions left
    times = np.concatenate([(np.arange(c) + 0.5) / w for c, w in zip(counts, weights, strict=True)])
    owners = np.repeat(np.arange(len(weights), dtype=np.int16), counts)
    return owners[np.argsort(times, kind="stable")]


def _positions_within(owners: np.ndarray, datasets: int) -> np.ndarray:
    """For each position, how many earlier positions read the same dataset."""
    out = np.empty(len(owners), dtype=np.int64)
    for i in range(datasets):
        mask = owners == i
        out[mask] = np.arange(int(mask.sum()))
    return out


class _Cache:
    """Arrays cached as .npy in a folder, under a name derived from what they depend on."""

    def __init__(self, folder: str | os.PathLike[str] | None, data: Path, key: dict[str, Any]):
        self.folder = Path(folder) if folder is not None else data.parent / "index_cache"
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.stem = f"{data.stem}-{digest}"

    def array(self, name: str, build: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array (memory-mapped), else `build()`'s, saved when the folder is writable."""
        path = self.folder / f"{self.stem}-{name}.npy"
        if path.is_file():
            return np.load(path, mmap_mode="r")
        array = build()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(path, lambda tmp: _save(tmp, array))
        except OSError as e:
            log.warning("index cache %s not written (%s): it is rebuilt on every start", path, e)
            return array
        return np.load(path, mmap_mode="r")


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
