"""Process-group initialisation from the torchrun environment, and a clean shutdown."""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

_BACKENDS = ("auto", "nccl", "gloo", "cuda:nccl,cpu:gloo")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its ranks, the world size, its device and backend.

    ``backend`` is None for a single process that was not launched by torchrun (no process
    group is created then).
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None
    is_main: bool


def launched_by_torchrun() -> bool:
    """True when the torchrun / torch.distributed.run environment variables are set."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _default_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _resolve_backend(backend: str) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(_BACKENDS)}")
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if "nccl" in backend and not torch.cuda.is_available():
        raise ValueError(f"backend {backend!r} needs CUDA, and no CUDA device is available")
    return backend


def init_distributed(backend: str = "auto", timeout_minutes: float = 30) -> DistEnv:
    """Initialise the default process group from the torchrun environment.

    ``backend="auto"`` picks nccl when CUDA is available (and sets this process's CUDA device
    from LOCAL_RANK) and gloo otherwise. Not launched by torchrun (no RANK / WORLD_SIZE in the
    environment), this creates no process group and returns a one-process DistEnv. Calling it
    again once the group exists returns the current environment.
    """
    if not launched_by_torchrun():
        if dist.is_available() and dist.is_initialized():
            return _current_env()
        _resolve_backend(backend)  # still reject unknown names
        device = _default_device(0)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistEnv(0, 0, 1, device, None, True)
    if not dist.is_available():
        raise RuntimeError("launched by torchrun, but this torch build has no torch.distributed")
    if dist.is_initialized():
        return _current_env()
    name = _resolve_backend(backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    kwargs = {}
    if "nccl" in name:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        kwargs["device_id"] = device  # binds the group to the device: eager NCCL init
    dist.init_process_group(
        backend=name, timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs
    )
    return _current_env()


def _current_env() -> DistEnv:
    """The DistEnv of an already initialised default process group."""
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = str(dist.get_backend())
    if "nccl" in backend:
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return DistEnv(rank, local_rank, world, device, backend, rank == 0)


def destroy_distributed(barrier: bool = True) -> None:
    """Tear the default process group down; a no-op when there is none (idempotent).

    Collects garbage first (FSDP / DDP / DeviceMesh objects still holding communicators can make
    gloo and nccl abort at exit), then waits for every rank at a barrier unless ``barrier`` is
    False (pass False after a failure on one rank: the others would wait forever).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    if barrier and dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()
    _forget_dtensor_plans()


def _forget_dtensor_plans() -> None:
    """Drop DTensor's cached sharding plans, which hold the meshes they were made on.

    The caches compare meshes by layout, not by process group: a later process group in this
    process (a second run in a notebook) with a mesh of the same layout would be sent to the
    destroyed groups ("could not resolve the process group").
    """
    clear = getattr(torch._C, "_clear_DTensor_sharding_propagator_cache", None)
    if clear is not None:  # the C++ dispatch's cache (torch >= 2.9)
        clear()
    from torch.distributed.tensor import DTensor

    propagator = DTensor._op_dispatcher.sharding_propagator
    propagator.propagate_op_sharding.cache_clear()  # the Python cache behind it
