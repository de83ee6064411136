"""The few collectives the checkpointer needs; all no-ops without a process group."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ._errors import CheckpointError


def is_distributed() -> bool:
    """Whether torch.distributed is available and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and the CPU (gloo) group the checkpointer talks over."""

    rank: int = 0
    world_size: int = 1
    group: dist.ProcessGroup | None = None  # None: single process

    @property
    def is_main(self) -> bool:
        """Whether this rank writes the shared parts and publishes."""
        return self.rank == 0

    @property
    def no_dist(self) -> bool:
        """Whether torch.distributed.checkpoint should run without collectives."""
        return self.group is None

    def barrier(self) -> None:
        """Wait for every rank (over the gloo group)."""
        if self.group is not None:
            dist.barrier(group=self.group)

    def gather(self, obj: object) -> list[object]:
        """Every rank's ``obj`` on rank 0 (in rank order; ``[]`` elsewhere); a collective."""
        if self.group is None:
            return [obj]
        gathered: list[object] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, gathered, dst=dist.get_global_rank(self.group, 0), group=self.group)
        return gathered or []

    def agree(self, error: BaseException | None, what: str) -> None:
        """Raise on every rank if ``error`` is set on any: ``error`` itself where it happened."""
        failed = error is not None
        if self.group is not None:
            flag = torch.tensor([int(failed)], dtype=torch.int64)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
            if flag.item() and not failed:
                raise CheckpointError(f"{what} failed on another rank; see that rank's log")
        if error is not None:
            raise error


def make_context(
    group: dist.ProcessGroup | None, processes: dist.ProcessGroup | None = None
) -> DistContext:
    """The context of this process among ``processes`` (default: every process), creating the
    dedicated gloo group when ``group`` is None.

    Creating the group is a collective: every rank of ``processes`` must get here (each
    ``save``/``restore`` call is one on every rank).
    """
    if not is_distributed() or dist.get_world_size(processes) == 1:
        return DistContext()
    if group is None and processes is None:
        group = dist.new_group(backend="gloo")
    elif group is None:  # only its members get here: local synchronisation
        if dist.get_global_rank(processes, 0) != 0:
            raise ValueError(
                "a checkpointer's group must hold global rank 0 (as its rank 0): the full "
                "model state is gathered there"
            )
        gloo = "gloo" in str(dist.get_backend(processes))
        ranks = dist.get_process_group_ranks(processes)
        group = processes if gloo else dist.new_group(ranks, backend="gloo", use_local_synchronization=True)  # fmt: skip
    return DistContext(dist.get_rank(processes), dist.get_world_size(processes), group)
