"""Gradient accumulation without communication: one gradient reduction per optimizer step."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from torch import nn
from torch.nn.parallel import DistributedDataParallel


@contextlib.contextmanager
def no_sync(model: nn.Module) -> Iterator[None]:
    """Backward passes inside keep gradients local; the first backward after it reduces them all.

    Use it around every micro-batch but the last of an optimizer step. DDP then all-reduces
    once per step instead of once per micro-batch. FSDP2 skips its reduce-scatter too, but
    keeps unsharded gradients between micro-batches (the memory of a full gradient per rank),
    so it trades memory for communication. A model with neither (one process) is unaffected.
    """
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    if isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
        return
    # torch.distributed.fsdp takes a while to import; an FSDP2 model has imported it already
    fsdp = sys.modules.get("torch.distributed.fsdp")
    sharded = [m for m in model.modules() if fsdp is not None and isinstance(m, fsdp.FSDPModule)]
    for module in sharded:
        module.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for module in sharded:
            module.set_requires_gradient_sync(True, recurse=False)
