"""The stateful, data-parallel dataloader."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from ._collate import collate
from ._errors import DataError
from ._sampler import ShardedSampler


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    dp_rank: int = 0,
    dp_size: int = 1,
    num_workers: int = 0,
    drop_last: bool = True,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    pad_token_id: int | None = None,
    pad_to_multiple_of: int | None = None,
    pin_memory: bool = False,
) -> StatefulDataLoader:
    """A StatefulDataLoader over this rank's shard; `state_dict()` mid-epoch resumes at the next batch.

    Shuffling is deterministic from (seed, epoch) and each full pass moves to the next epoch.
    An `IterableDataset` (a stream) is read in its own order, told its shard through
    `dataset.shard(dp_rank, dp_size)`, and resumes through its own `state_dict()`.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be a positive integer; got {batch_size!r}")
    if collate_fn is None:
        pad = getattr(dataset, "pad_token_id", 0) if pad_token_id is None else pad_token_id
        collate_fn = functools.partial(
            collate, pad_token_id=pad, pad_to_multiple_of=pad_to_multiple_of
        )
    if isinstance(dataset, IterableDataset):  # a stream: it shards itself, in its own order
        if hasattr(dataset, "shard"):
            dataset.shard(dp_rank, dp_size)
        return StatefulDataLoader(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
        )
    per_rank = len(dataset) // dp_size if drop_last else -(-len(dataset) // dp_size)
    if drop_last and per_rank < batch_size:
        raise DataError(
            f"the dataset has {len(dataset)} samples: not enough for one batch of {batch_size} "
            f"on each of {dp_size} data-parallel rank(s)"
        )
    sampler = ShardedSampler(
        len(dataset),
        shuffle=shuffle,
        seed=seed,
        dp_rank=dp_rank,
        dp_size=dp_size,
        drop_last=drop_last,
    )
    return StatefulDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )
