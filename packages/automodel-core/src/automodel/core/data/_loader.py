"""The stateful, data-parallel dataloader."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch.utils.data import Dataset, IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from ._collate import collate
from ._errors import DataError
from ._fingerprint import data_fingerprint, describe_change
from ._sampler import ShardedSampler

log = logging.getLogger("automodel.core.data")
_FINGERPRINT = "data_fingerprint"


class DataChangedError(DataError):
    """The data of a resumed run is not the data its checkpoint was trained on."""


class ResumableLoader(StatefulDataLoader):
    """A StatefulDataLoader whose state holds its dataset's fingerprint, checked on resume.

    With `on_data_change="restart_epoch"` other data is accepted on purpose: the run goes on
    from the start of the saved epoch of the new data.
    """

    def __init__(self, *args: Any, on_data_change: str = "error", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.on_data_change = on_data_change
        self._fingerprint: dict[str, Any] | None = None

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The dataset's fingerprint, taken once."""
        if self._fingerprint is None:
            self._fingerprint = data_fingerprint(self.dataset)
        return self._fingerprint

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), _FINGERPRINT: self.fingerprint}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        saved = state.pop(_FINGERPRINT, None)  # older checkpoints have none
        change = describe_change(saved, self.fingerprint) if saved is not None else None
        if change is None:
            super().load_state_dict(state)
            return
        if self.on_data_change != "restart_epoch":
            raise DataChangedError(
                f"the training data is not the data this checkpoint was trained on ({change}), "
                "so its position in the data means nothing here. Resume with the data it was "
                "trained on, or set dataloader.on_data_change: restart_epoch to go on with this "
                "data on purpose from the start of the saved epoch"
            )
        sampler_state = (state.get("_sampler_iter_state") or {}).get("sampler_state") or {}
        epoch = int(sampler_state.get("epoch", 0))
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        log.warning(
            "the training data changed since the checkpoint (%s); dataloader.on_data_change: "
            "restart_epoch, so the new data is read from the start of epoch %d", change, epoch,
        )  # fmt: skip


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
    padding_free: bool = False,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    on_data_change: Literal["error", "restart_epoch"] = "error",
) -> StatefulDataLoader:
    """A StatefulDataLoader over this rank's shard; `state_dict()` mid-epoch resumes at the next batch.

    `padding_free`: each batch is one row holding its samples end to end, `position_ids`
    restarting per sample (see `collate`); the model must keep them apart by those positions.

    Its state holds the dataset's fingerprint: resuming over other data is a DataChangedError,
    or with `on_data_change="restart_epoch"` starts the saved epoch of the new data.

    `persistent_workers`: with `num_workers` > 0, keep the worker processes between epochs
    (torch's option; without workers there is nothing to keep, and it is ignored).

    Shuffling is deterministic from (seed, epoch) and each full pass moves to the next epoch.
    An `IterableDataset` (a stream) is read in its own order, told its shard through
    `dataset.shard(dp_rank, dp_size)`, and resumes through its own `state_dict()`.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be a positive integer; got {batch_size!r}")
    if on_data_change not in ("error", "restart_epoch"):
        raise DataError(f"on_data_change must be error or restart_epoch; got {on_data_change!r}")
    if padding_free and collate_fn is not None:
        raise DataError(
            "padding_free batches are made by automodel's collate; this loader has a "
            "collate_fn of its own"
        )
    if collate_fn is None:
        pad = getattr(dataset, "pad_token_id", 0) if pad_token_id is None else pad_token_id
        collate_fn = functools.partial(
            collate, pad_token_id=pad, pad_to_multiple_of=pad_to_multiple_of,
            padding_free=padding_free,
        )  # fmt: skip
    if isinstance(dataset, IterableDataset):  # a stream: it shards itself, in its own order
        if hasattr(dataset, "shard"):
            dataset.shard(dp_rank, dp_size)
        return ResumableLoader(
            dataset,
            on_data_change=on_data_change,
            batch_size=batch_size,
            drop_last=drop_last,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers and num_workers > 0,
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
    return ResumableLoader(
        dataset,
        on_data_change=on_data_change,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
