"""DeepEP backend for the expert-parallel token exchange (``automodel-moe[deepep]``).

DeepEP (https://github.com/deepseek-ai/DeepEP) replaces the two ``all_to_all_single`` calls of
``automodel.moe._ep_dispatch`` with fused NVLink/RDMA kernels. It needs CUDA GPUs (and NVSHMEM
across nodes); importing this module never imports ``deep_ep``.

Its normal (high-throughput) kernels move data differently from our all-to-all, so
``DeepEPDispatcher`` adapts them to the same ``TokenDispatcher`` contract:

- ``Buffer.dispatch`` sends each token once per destination rank (not once per expert), with
  its routing weights; the ids of experts on other ranks arrive as -1. The dispatcher expands
  the received tokens into one row per local (token, expert) pair, sorted by local expert.
- ``Buffer.combine`` sums per destination rank without weights, so ``combine`` scales each row
  by its routing weight and sums a token's local rows before handing them to DeepEP.
- DeepEP is not autograd-aware: the backward of dispatch is a combine (of the gradients of the
  tokens and of their weights) and the backward of combine is a dispatch reusing the handle.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist

from automodel.moe._ep_dispatch import Group, _resolve_group, check_routing, local_expert_range

__all__ = ["DEEPEP_INSTALL_HINT", "DeepEPDispatcher", "deepep_available", "require_deepep"]

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


class _SharedBuffer:
    """One ``deep_ep.Buffer`` per group for every MoE layer, sized for the widest token seen."""

    def __init__(self, deep_ep: ModuleType, group: dist.ProcessGroup) -> None:
        self.deep_ep, self.group = deep_ep, group
        self.buffer: Any = None
        self.hidden_bytes = 0

    def get(self, hidden_bytes: int) -> Any:
        if self.buffer is None or hidden_bytes > self.hidden_bytes:
            ranks = self.group.size()
            cls = self.deep_ep.Buffer
            configs = (cls.get_dispatch_config(ranks), cls.get_combine_config(ranks))
            nvl = max(c.get_nvl_buffer_size_hint(hidden_bytes, ranks) for c in configs)
            rdma = max(c.get_rdma_buffer_size_hint(hidden_bytes, ranks) for c in configs)
            self.buffer = cls(self.group, nvl, rdma)
            self.hidden_bytes = hidden_bytes
        return self.buffer


class _Dispatch(torch.autograd.Function):
    """``Buffer.dispatch`` of tokens and weights; backward: ``Buffer.combine`` of both grads."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_idx: torch.Tensor,
        buffer: Any,
        num_experts: int,
        out: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        per_rank, per_rdma_rank, per_expert, in_rank, _ = buffer.get_dispatch_layout(
            topk_idx, num_experts
        )
        recv_x, recv_idx, recv_weights, _, handle, _ = buffer.dispatch(
            x,
            topk_idx=topk_idx,
            topk_weights=topk_weights,
            num_tokens_per_rank=per_rank,
            num_tokens_per_rdma_rank=per_rdma_rank,
            is_token_in_rank=in_rank,
            num_tokens_per_expert=per_expert,
        )
        out.update(handle=handle, recv_idx=recv_idx)  # the outputs autograd does not track
        ctx.buffer, ctx.handle = buffer, handle
        return recv_x, recv_weights

    @staticmethod
    def backward(ctx: Any, grad_x: torch.Tensor, grad_weights: torch.Tensor) -> tuple:
        grad, grad_w, _ = ctx.buffer.combine(
            grad_x.contiguous(), ctx.handle, topk_weights=grad_weights.float().contiguous()
        )
        return grad, grad_w, None, None, None, None


class _Combine(torch.autograd.Function):
    """``Buffer.combine`` (a sum over the token's ranks); backward: a cached ``Buffer.dispatch``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, buffer: Any, handle: Any) -> torch.Tensor:
        ctx.buffer, ctx.handle = buffer, handle
        combined, _, _ = buffer.combine(x, handle)
        return combined

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        recv, *_ = ctx.buffer.dispatch(grad.contiguous(), handle=ctx.handle)
        return recv, None, None


@dataclass
class DeepEPHandle:
    """What ``DeepEPDispatcher.combine`` needs to undo one ``dispatch``."""

    deep_ep_handle: Any  # DeepEP's own (layout tensors of the exchange)
    buffer: Any
    received: int  # tokens received from every rank
    row_token: torch.Tensor  # received token of each row of the sorted rows
    row_weights: torch.Tensor  # routing weight of each row (float32, differentiable)


class DeepEPDispatcher:
    """The ``TokenDispatcher`` on DeepEP's kernels, for one expert-parallel group.

    ``exchange_dtype`` is the dtype tokens travel in: DeepEP's normal kernels take bfloat16
    only (the expert matmuls still run in the weights' dtype). ``deep_ep`` is the module to
    use; by default the installed one, after checking that it and CUDA are available.
    """

    def __init__(
        self,
        group: Group,
        num_experts: int,
        exchange_dtype: torch.dtype = torch.bfloat16,
        deep_ep: ModuleType | None = None,
    ) -> None:
        self.deep_ep = require_deepep() if deep_ep is None else deep_ep
        self.group = _resolve_group(group) or dist.group.WORLD
        self.num_experts = num_experts
        self.local_experts = local_expert_range(num_experts, self.group)
        self.exchange_dtype = exchange_dtype
        self.buffers = _SharedBuffer(self.deep_ep, self.group)

    def share_buffer(self, other: DeepEPDispatcher) -> None:
        """Use ``other``'s communication buffer (one per group, not one per MoE layer)."""
        self.buffers = other.buffers

    def dispatch(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, DeepEPHandle]:
        """Rows of this rank's (token, local expert) pairs sorted by expert; their counts."""
        check_routing(x, topk_ids, topk_weights, self.num_experts)
        x = x.to(self.exchange_dtype).contiguous()
        hidden_bytes = x.shape[1] * max(x.element_size(), 2)
        buffer = self.buffers.get(hidden_bytes)
        out: dict[str, Any] = {}
        recv_x, recv_weights = _Dispatch.apply(
            x, topk_weights.float(), topk_ids.long().contiguous(), buffer, self.num_experts, out
        )
        recv_idx = out["recv_idx"]  # local expert of each (token, slot), -1 elsewhere
        token, slot = (recv_idx >= 0).nonzero(as_tuple=True)
        expert = recv_idx[token, slot]
        order = torch.argsort(expert, stable=True)
        row_token = token.index_select(0, order)
        counts = torch.bincount(expert, minlength=len(self.local_experts))
        handle = DeepEPHandle(
            deep_ep_handle=out["handle"],
            buffer=buffer,
            received=recv_x.shape[0],
            row_token=row_token,
            row_weights=recv_weights[token, slot].index_select(0, order),
        )
        return recv_x.index_select(0, row_token), counts, handle

    def combine(self, y: torch.Tensor, handle: DeepEPHandle) -> torch.Tensor:
        """Weight each expert row, sum a token's rows here, then over its ranks with DeepEP."""
        if y.dim() != 2 or y.shape[0] != handle.row_token.numel():
            raise ValueError(
                f"y must be [{handle.row_token.numel()}, hidden] like the dispatched rows, "
                f"got {tuple(y.shape)}"
            )
        weighted = y.float() * handle.row_weights.unsqueeze(-1)
        per_token = weighted.new_zeros(handle.received, y.shape[1])
        per_token = per_token.index_add(0, handle.row_token, weighted)
        return _Combine.apply(
            per_token.to(self.exchange_dtype), handle.buffer, handle.deep_ep_handle
        )
