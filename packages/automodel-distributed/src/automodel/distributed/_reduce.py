"""Rank-aware helpers for a training loop; each is a no-op without an initialised process group."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist

Number = TypeVar("Number", int, float, torch.Tensor)


def _active(group: dist.ProcessGroup | None) -> bool:
    """True when collectives over ``group`` have more than one member."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size(group) > 1


def _comm_device(group: dist.ProcessGroup | None) -> torch.device:
    """Where a tensor must live for a collective over ``group``."""
    backend = str(dist.get_backend(group))
    if "nccl" in backend and "cpu" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(x: Number, group: dist.ProcessGroup | None, op: dist.ReduceOp) -> Number:
    if isinstance(x, torch.Tensor):
        device = _comm_device(group) if x.device.type == "cpu" else x.device
        out = x.detach().to(device, copy=True)
        dist.all_reduce(out, op=op, group=group)
        return out.to(x.device)
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise TypeError(f"expected an int, float or torch.Tensor, got {type(x).__name__}")
    dtype = torch.int64 if isinstance(x, int) else torch.float64
    out = torch.tensor(x, dtype=dtype, device=_comm_device(group))
    dist.all_reduce(out, op=op, group=group)
    return out.item()


def all_reduce_sum(x: Number, group: dist.ProcessGroup | None = None) -> Number:
    """Sum of ``x`` over the ranks of ``group`` (default: all): int/float in, same kind out.

    A tensor comes back as a new tensor on its own device (the input is not modified).
    Without a process group (or a one-rank group) ``x`` itself is returned.
    """
    if not _active(group):
        return x
    return _all_reduce(x, group, dist.ReduceOp.SUM)


def all_reduce_max(x: Number, group: dist.ProcessGroup | None = None) -> Number:
    """Maximum of ``x`` over the ranks of ``group`` (default: all), as ``all_reduce_sum``."""
    if not _active(group):
        return x
    return _all_reduce(x, group, dist.ReduceOp.MAX)


def all_reduce_mean(
    x: int | float | torch.Tensor, group: dist.ProcessGroup | None = None
) -> float | torch.Tensor:
    """Mean of ``x`` over the ranks of ``group``: a float for a number, a tensor for a tensor."""
    if not _active(group):
        return float(x) if not isinstance(x, torch.Tensor) else x
    if isinstance(x, torch.Tensor):
        total = _all_reduce(x if x.is_floating_point() else x.double(), group, dist.ReduceOp.SUM)
        return total / dist.get_world_size(group)
    return float(_all_reduce(float(x), group, dist.ReduceOp.SUM)) / dist.get_world_size(group)


def global_label_tokens(
    count: int | torch.Tensor, group: dist.ProcessGroup | None = None
) -> int | torch.Tensor:
    """The number of label tokens in the global batch: this rank's ``count`` summed over ``group``.

    ``group`` is the data-parallel group gradients are averaged over (``dp_group(mesh,
    include_cp=True)``). With every rank's loss = sum of token losses / global_label_tokens ×
    group size, the averaged gradient is exactly the gradient of the mean over all tokens of the
    global batch, however unevenly the tokens fall on the ranks.
    """
    return all_reduce_sum(count, group)


def _rank(local: bool) -> int:
    """This process's rank (global, or on its node), also before the process group exists."""
    if local:
        return int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process(local: bool = False) -> bool:
    """True on global rank 0 (or local rank 0 with ``local=True``); True without torchrun."""
    return _rank(local) == 0


def barrier(group: dist.ProcessGroup | None = None) -> None:
    """Wait for every rank of ``group``; a no-op without a process group."""
    if _active(group):
        dist.barrier(group=group)


@contextmanager
def main_process_first(
    local: bool = False, group: dist.ProcessGroup | None = None
) -> Iterator[None]:
    """Run the block on the main process first, then on the others (e.g. build a dataset cache).

    With ``local=True`` local rank 0 of every node goes first (for node-local caches). The
    main process releases the others even when its block raises.
    """
    main = is_main_process(local)
    if not main:
        barrier(group)
    try:
        yield
    finally:
        if main:
            barrier(group)
