"""Async saving: one background thread (one save at a time) and reusable snapshot buffers."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


class BackgroundWriter:
    """Runs jobs on a single worker thread; :meth:`wait` re-raises a job's exception once."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._future: Future[Any] | None = None

    @property
    def busy(self) -> bool:
        """Whether a job was submitted and not yet waited for."""
        return self._future is not None

    def submit(self, job: Callable[[], Any]) -> None:
        """Start ``job`` in the background (after waiting for the previous one)."""
        self.wait()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._future = self._executor.submit(job)

    def wait(self) -> None:
        """Block until the current job is done; raise its exception, if any (only once)."""
        future, self._future = self._future, None
        if future is not None:
            future.result()

    def close(self) -> None:
        """Wait for the current job, then stop the thread (also when the job failed)."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (sharing its memory), or the tensor itself."""
    return tensor.to_local() if callable(getattr(tensor, "full_tensor", None)) else tensor


def _fits(buffer: torch.Tensor, tensor: torch.Tensor) -> bool:
    """Whether ``buffer`` can take a copy of ``tensor``: same kind, shape, dtype, placement."""
    if type(buffer) is not type(tensor) or buffer.shape != tensor.shape:
        return False
    if buffer.dtype != tensor.dtype or _local(buffer).shape != _local(tensor).shape:
        return False
    return getattr(buffer, "placements", None) == getattr(tensor, "placements", None) and (
        getattr(buffer, "device_mesh", None) == getattr(tensor, "device_mesh", None)
    )


class SnapshotBuffers:
    """CPU copies for async snapshots, reused from one save to the next.

    Fresh memory costs a page fault per page (on some VMs slower than the copy itself); after
    the first save, snapshots copy into the same buffers. Only touched between saves (save()
    waits for the previous one before snapshotting again).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self._used: set[str] = set()

    def copy(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """A CPU copy of ``tensor`` (DTensors stay DTensors with a CPU local shard)."""
        self._used.add(key)
        tensor = tensor.detach()
        buffer = self._buffers.get(key)
        if buffer is not None and _fits(buffer, tensor):
            _local(buffer).copy_(_local(tensor))
            return buffer
        buffer = tensor.to("cpu", copy=True)
        self._buffers[key] = buffer
        return buffer

    def drop_unused(self) -> None:
        """Forget buffers not used since the last call (the model or optimizer changed)."""
        self._buffers = {k: v for k, v in self._buffers.items() if k in self._used}
        self._used = set()

    def clear(self) -> None:
        """Release every buffer."""
        self._buffers.clear()
        self._used = set()
