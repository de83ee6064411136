"""Optional DeepEP backend for the expert-parallel token exchange (``automodel-moe[deepep]``).

DeepEP (https://github.com/deepseek-ai/DeepEP) replaces the two ``all_to_all_single`` calls of
``automodel.moe._ep_dispatch`` with fused NVLink/RDMA kernels. It needs CUDA GPUs and NVSHMEM,
so this module only checks that it can be used and names what is missing; importing this
module never imports ``deep_ep``.

A DeepEP dispatcher must implement ``automodel.moe._ep_dispatch.TokenDispatcher``:
``dispatch(x, topk_ids) -> (recv_x sorted by local expert, tokens_per_local_expert, handle)``
and ``combine(y, handle, topk_weights) -> [tokens, hidden]``, with the same expert sharding
(rank ``r`` owns experts ``[r * E/W, (r + 1) * E/W)``) and the same autograd contract, so it
can be swapped for ``AllToAllDispatcher`` without touching the expert computation.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
import torch.distributed as dist

from automodel.moe._ep_dispatch import Group, TokenDispatcher, _resolve_group, experts_per_rank

__all__ = ["DEEPEP_INSTALL_HINT", "deepep_available", "make_deepep_dispatcher", "require_deepep"]

DEEPEP_INSTALL_HINT = (
    "install the extra with `pip install automodel-moe[deepep]` (DeepEP needs CUDA GPUs and "
    "NVSHMEM; see https://github.com/deepseek-ai/DeepEP), or use the default all-to-all "
    "expert-parallel backend"
)


def _import_deep_ep() -> ModuleType | None:
    try:
        return importlib.import_module("deep_ep")
    except ImportError:
        return None


def deepep_available() -> bool:
    """Whether ``deep_ep`` imports and CUDA is available."""
    return torch.cuda.is_available() and _import_deep_ep() is not None


def require_deepep() -> ModuleType:
    """Return the ``deep_ep`` module; ``RuntimeError`` naming the extra when it cannot be used."""
    module = _import_deep_ep()
    if module is None:
        raise RuntimeError(f"the DeepEP backend needs the `deep_ep` package: {DEEPEP_INSTALL_HINT}")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"the DeepEP backend needs CUDA, which is not available: {DEEPEP_INSTALL_HINT}"
        )
    return module


def make_deepep_dispatcher(group: Group, num_experts: int) -> TokenDispatcher:
    """Build the DeepEP dispatcher for ``group``, after checking DeepEP can be used."""
    require_deepep()
    experts_per_rank(num_experts, dist.get_world_size(_resolve_group(group)))
    # Untested without GPUs, so not wired: DeepEP's Buffer.dispatch sends each token once per
    # destination rank (not once per expert) and its combine sums per rank, so the dispatcher
    # needs its own autograd Functions and a local-expert permutation around them.
    raise NotImplementedError(
        "the DeepEP dispatcher is not implemented in this release; use the all-to-all "
        "backend (automodel.moe._ep_dispatch.AllToAllDispatcher)"
    )
