"""The global rank of this process, from torch.distributed or the launcher's environment."""

from __future__ import annotations

import os


def global_rank(rank: int | None = None) -> int:
    """`rank` when given, else the torch.distributed rank, else $RANK, else 0."""
    if rank is not None:
        return int(rank)
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return int(os.environ.get("RANK", "0"))
