"""A data-parallel, resumable, epoch-aware sampler for map-style datasets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler


class ShardedSampler(Sampler[int]):
    """Indices of one data-parallel rank's shard of an epoch, shuffled deterministically from (seed, epoch).

    Every rank gets the same number of indices: with `drop_last` the tail of the epoch that does
    not divide evenly is left out, otherwise indices from the start are repeated. A full pass
    advances `epoch`; `state_dict()` records the epoch and how many indices were handed out, and
    the next iteration after `load_state_dict()` continues from exactly there.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        dp_rank: int = 0,
        dp_size: int = 1,
        drop_last: bool = True,
    ):
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(
                f"need 0 <= dp_rank < dp_size; got dp_rank={dp_rank}, dp_size={dp_size}"
            )
        if num_samples < (dp_size if drop_last else 1):
            raise ValueError(
                f"{num_samples} samples cannot be shared by {dp_size} data-parallel ranks"
            )
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.drop_last = drop_last
        self.epoch = 0
        self.yielded = 0

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.dp_size
        return -(-self.num_samples // self.dp_size)

    def set_epoch(self, epoch: int) -> None:
        """Start the given epoch from its beginning on the next iteration."""
        self.epoch = epoch
        self.yielded = 0

    def indices(self, epoch: int) -> list[int]:
        """This rank's indices for an epoch, in order."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        total = len(self) * self.dp_size
        order = (order * (-(-total // len(order))))[:total]
        return order[self.dp_rank :: self.dp_size]

    def __iter__(self) -> Iterator[int]:
        return self._iterate()

    def _iterate(self) -> Iterator[int]:
        # A generator: nothing runs, and no state is read, until the first index is requested.
        epoch, start = self.epoch, self.yielded
        for index in self.indices(epoch)[start:]:
            self.yielded += 1
            yield index
        self.epoch, self.yielded = epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        """The epoch, the number of its indices handed out so far, and the data-parallel size."""
        return {
            "epoch": self.epoch,
            "yielded": self.yielded,
            "seed": self.seed,
            "dp_size": self.dp_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()`, saved with this or another dp_size, right after it."""
        saved_dp = int(state.get("dp_size", self.dp_size))
        consumed = int(state["yielded"]) * saved_dp  # positions of the epoch's order, all ranks
        if consumed % self.dp_size:
            raise ValueError(
                f"the saved data position ({consumed} samples of epoch {state['epoch']} over "
                f"{saved_dp} data-parallel rank(s)) does not divide over {self.dp_size} ranks; "
                f"resume with a data-parallel size that divides {consumed}"
            )
        self.epoch = int(state["epoch"])
        self.yielded = consumed // self.dp_size
