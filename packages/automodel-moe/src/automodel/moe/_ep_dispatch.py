"""Expert-parallel token exchange over a process group with ``all_to_all_single``.

``E`` global experts are sharded contiguously over an ``ep`` group of size ``W``: rank ``r``
owns experts ``[r * E/W, (r + 1) * E/W)``. ``dispatch`` sends each (token, top-k slot)
assignment to the rank owning its expert and returns the received rows grouped by local
expert; ``combine`` sends the expert outputs back and sums them with the routing weights
given to ``dispatch`` (kept in the handle, applied on the token's own rank).
Both are differentiable: the backward of each exchange is the reverse exchange, so every rank
of the group must run backward through the same dispatch/combine calls, and ``x`` must require
grad on every rank or on none (a rank whose exchange is not in the autograd graph would skip
the reverse collective and the others would wait for it). Only torch.distributed is used; any backend with ``all_to_all_single`` works
(gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

__all__ = [
    "AllToAllDispatcher",
    "DispatchHandle",
    "TokenDispatcher",
    "check_routing",
    "combine",
    "dispatch",
    "experts_per_rank",
    "local_expert_range",
]

Group = dist.ProcessGroup | DeviceMesh | None


@dataclass
class DispatchHandle:
    """What ``combine`` needs to undo one ``dispatch``."""

    group: dist.ProcessGroup | None
    # (token, slot) flat index of each sent row, in send (global-expert) order, and its inverse.
    send_order: torch.Tensor
    send_inverse: torch.Tensor
    # Received row (source-rank-major) for each row of recv_x (local-expert-major), and inverse.
    recv_order: torch.Tensor
    recv_inverse: torch.Tensor
    input_splits: list[int]  # rows this rank sent to each peer
    output_splits: list[int]  # rows this rank received from each peer
    topk_weights: torch.Tensor  # [tokens, k], applied by combine


def experts_per_rank(num_experts: int, ep_size: int) -> int:
    """Number of experts each rank owns; ``ValueError`` unless ``ep_size`` divides them."""
    if ep_size < 1 or num_experts < 1:
        raise ValueError(f"need num_experts >= 1 and ep_size >= 1, got {num_experts}, {ep_size}")
    if num_experts % ep_size:
        raise ValueError(
            f"num_experts={num_experts} is not divisible by the expert-parallel size "
            f"ep_size={ep_size}; choose an ep_size that divides the number of experts"
        )
    return num_experts // ep_size


def _resolve_group(group: Group) -> dist.ProcessGroup | None:
    if isinstance(group, DeviceMesh):
        if group.ndim != 1:
            raise ValueError(f"expert parallelism needs a 1-D mesh, got {group.ndim}-D")
        return group.get_group()
    return group


def _all_to_all(
    x: torch.Tensor, output_splits: list[int], input_splits: list[int], group: Any
) -> torch.Tensor:
    out = x.new_empty((sum(output_splits), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), output_splits, input_splits, group=group)
    return out


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` with variable splits whose backward is the reverse exchange."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, output_splits: list[int], input_splits: list[int], group: Any
    ) -> torch.Tensor:
        ctx.splits = (output_splits, input_splits)
        ctx.group = group
        return _all_to_all(x, output_splits, input_splits, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        output_splits, input_splits = ctx.splits
        return _all_to_all(grad, input_splits, output_splits, ctx.group), None, None, None


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv


def check_routing(
    x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, num_experts: int
) -> None:
    """``ValueError`` unless ``x`` ``[T, H]``, ``topk_ids`` and ``topk_weights`` ``[T, k]`` fit."""
    if x.dim() != 2:
        raise ValueError(f"x must be [tokens, hidden], got shape {tuple(x.shape)}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(
            f"topk_ids must be [tokens, k] with tokens={x.shape[0]}, got {tuple(topk_ids.shape)}"
        )
    if topk_ids.dtype.is_floating_point or topk_ids.dtype == torch.bool:
        raise ValueError(f"topk_ids must be an integer tensor, got {topk_ids.dtype}")
    if topk_ids.numel() and (topk_ids.min() < 0 or topk_ids.max() >= num_experts):
        raise ValueError(f"topk_ids must lie in [0, {num_experts}), got values outside it")
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"topk_weights must have the shape of topk_ids {tuple(topk_ids.shape)}, "
            f"got {tuple(topk_weights.shape)}"
        )


def dispatch(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    group: Group,
    num_experts: int,
) -> tuple[torch.Tensor, torch.Tensor, DispatchHandle]:
    """Send each (token, slot) row to its expert's rank; rows come back grouped by local expert."""
    check_routing(x, topk_ids, topk_weights, num_experts)
    pg = _resolve_group(group)
    world = dist.get_world_size(pg)
    local = experts_per_rank(num_experts, world)
    topk = topk_ids.shape[1]

    flat_ids = topk_ids.reshape(-1).long()
    send_order = torch.argsort(flat_ids, stable=True)
    send_x = x.index_select(0, torch.div(send_order, topk, rounding_mode="floor"))
    send_counts = torch.bincount(flat_ids, minlength=num_experts)
    # recv_counts[s * local + e]: rows source rank s sends for this rank's local expert e.
    recv_counts = _all_to_all(send_counts, [local] * world, [local] * world, pg)
    input_splits = send_counts.view(world, local).sum(1).tolist()
    output_splits = recv_counts.view(world, local).sum(1).tolist()

    recv = _AllToAll.apply(send_x, output_splits, input_splits, pg)
    row_expert = torch.repeat_interleave(
        torch.arange(local, device=x.device).repeat(world), recv_counts
    )
    recv_order = torch.argsort(row_expert, stable=True)
    recv_x = recv.index_select(0, recv_order)
    tokens_per_local_expert = recv_counts.view(world, local).sum(0)
    handle = DispatchHandle(
        group=pg,
        send_order=send_order,
        send_inverse=_inverse(send_order),
        recv_order=recv_order,
        recv_inverse=_inverse(recv_order),
        input_splits=input_splits,
        output_splits=output_splits,
        topk_weights=topk_weights,
    )
    return recv_x, tokens_per_local_expert, handle


def combine(y: torch.Tensor, handle: DispatchHandle) -> torch.Tensor:
    """Return expert outputs to their tokens: ``out[t] = sum_j topk_weights[t, j] * y[t, j]``."""
    if y.dim() != 2 or y.shape[0] != handle.recv_order.numel():
        raise ValueError(
            f"y must be [{handle.recv_order.numel()}, hidden] like recv_x, got {tuple(y.shape)}"
        )
    weights = handle.topk_weights
    back = y.index_select(0, handle.recv_inverse)
    sent = _AllToAll.apply(back, handle.input_splits, handle.output_splits, handle.group)
    rows = sent.index_select(0, handle.send_inverse).view(*weights.shape, y.shape[1])
    out = (rows.float() * weights.float().unsqueeze(-1)).sum(dim=1)
    return out.to(y.dtype)


class TokenDispatcher(Protocol):
    """The interface every expert-parallel backend (all-to-all, DeepEP) implements."""

    num_experts: int
    local_experts: range  # the global ids of this rank's experts

    def dispatch(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Return ``(rows sorted by local expert, tokens_per_local_expert, handle)``."""
        ...

    def combine(self, y: torch.Tensor, handle: Any) -> torch.Tensor:
        """Return ``[tokens, hidden]``: each token's expert outputs summed with its weights."""
        ...


def local_expert_range(num_experts: int, group: dist.ProcessGroup | None) -> range:
    """The global ids of the experts this rank of ``group`` owns (a contiguous share)."""
    local = experts_per_rank(num_experts, dist.get_world_size(group))
    start = dist.get_rank(group) * local
    return range(start, start + local)


class AllToAllDispatcher:
    """``dispatch``/``combine`` bound to one expert-parallel group and expert count."""

    def __init__(self, group: Group, num_experts: int) -> None:
        self.group = _resolve_group(group)
        self.num_experts = num_experts
        self.local_experts = local_expert_range(num_experts, self.group)

    def dispatch(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, DispatchHandle]:
        """See ``dispatch``."""
        return dispatch(x, topk_ids, topk_weights, self.group, self.num_experts)

    def combine(self, y: torch.Tensor, handle: DispatchHandle) -> torch.Tensor:
        """See ``combine``."""
        return combine(y, handle)
