"""A stand-in for DeepEP's ``deep_ep`` module on CPU and gloo, for the dispatcher tests.

DeepEP cannot run here (its kernels need 2-8 NVLink-connected GPUs), so this module imitates
the part of its public API that ``DeepEPDispatcher`` uses, with the behaviour DeepEP documents
for its normal (intranode/internode) kernels:

- ``get_dispatch_layout(topk_idx int64, num_experts)`` -> ``(tokens per rank, None, tokens per
  expert, is_token_in_rank [T, ranks] bool, event)``.
- ``dispatch(x, topk_idx=, topk_weights=, num_tokens_per_rank=, ...)`` sends each token once to
  every rank holding one of its experts; received tokens are grouped by source rank, in token
  order; ``recv_topk_idx`` holds local expert ids, -1 for experts on other ranks. Returns
  ``(recv_x, recv_topk_idx, recv_topk_weights, tokens per local expert (list), handle, event)``.
  With ``handle=`` only ``x`` is sent again, along the same layout (a cached dispatch).
- ``combine(x, handle, topk_weights=None)`` sends the rows back and sums each token's rows
  **without weights**; ``topk_weights`` rows are summed the same way.
- Like DeepEP it is not autograd-aware: outputs never carry a gradient history.

It differs in what cannot matter to the caller: float32 is accepted besides bfloat16, every
call is synchronous, and the handle's contents are its own.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

created: list[dict[str, Any]] = []  # constructor arguments of every Buffer, for the tests
_DTYPES = (torch.bfloat16, torch.float32)


class Config:
    """Tuning config; only the buffer size hints are used by the dispatcher."""

    def get_nvl_buffer_size_hint(self, hidden_bytes: int, num_ranks: int) -> int:
        return hidden_bytes * num_ranks * 1024

    def get_rdma_buffer_size_hint(self, hidden_bytes: int, num_ranks: int) -> int:
        return 0


class EventOverlap:
    """DeepEP's event wrapper; every fake call has already finished."""

    def current_stream_wait(self) -> None:
        pass


def _exchange(x: torch.Tensor, send: list[int], recv: list[int], group: Any) -> torch.Tensor:
    out = x.new_empty((sum(recv), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), recv, send, group=group)
    return out


class Buffer:
    num_sms = 20

    def __init__(
        self,
        group: dist.ProcessGroup,
        num_nvl_bytes: int = 0,
        num_rdma_bytes: int = 0,
        low_latency_mode: bool = False,
        **_: Any,
    ) -> None:
        self.group, self.rank, self.group_size = group, group.rank(), group.size()
        self.num_nvl_bytes, self.num_rdma_bytes = num_nvl_bytes, num_rdma_bytes
        created.append({"nvl": num_nvl_bytes, "rdma": num_rdma_bytes, "ranks": group.size()})

    @staticmethod
    def get_dispatch_config(num_ranks: int) -> Config:
        return Config()

    @staticmethod
    def get_combine_config(num_ranks: int) -> Config:
        return Config()

    def get_dispatch_layout(
        self, topk_idx: torch.Tensor, num_experts: int, **_: Any
    ) -> tuple[torch.Tensor, None, torch.Tensor, torch.Tensor, EventOverlap]:
        assert topk_idx.dtype == torch.int64, "topk_idx must be int64"
        local = num_experts // self.group_size
        valid = topk_idx >= 0
        rank_of = torch.where(valid, topk_idx // local, -1)
        in_rank = torch.zeros(topk_idx.shape[0], self.group_size, dtype=torch.bool)
        for r in range(self.group_size):
            in_rank[:, r] = (rank_of == r).any(dim=1)
        per_expert = torch.bincount(topk_idx[valid], minlength=num_experts).int()
        return in_rank.sum(0).int(), None, per_expert, in_rank, EventOverlap()

    def dispatch(
        self,
        x: torch.Tensor,
        handle: tuple | None = None,
        num_tokens_per_rank: torch.Tensor | None = None,
        num_tokens_per_rdma_rank: torch.Tensor | None = None,
        is_token_in_rank: torch.Tensor | None = None,
        num_tokens_per_expert: torch.Tensor | None = None,
        topk_idx: torch.Tensor | None = None,
        topk_weights: torch.Tensor | None = None,
        **_: Any,
    ) -> tuple:
        assert x.dim() == 2 and x.dtype in _DTYPES, (x.shape, x.dtype)
        x = x.detach()
        if handle is not None:
            assert topk_idx is None and topk_weights is None, "a cached dispatch sends x only"
            tokens, send, recv, _ = handle
            return _exchange(x[tokens], send, recv, self.group), None, None, None, None, None
        assert is_token_in_rank is not None and num_tokens_per_rank is not None
        assert num_tokens_per_expert is not None
        # Per destination rank, the tokens it gets, in token order.
        per_dest = [is_token_in_rank[:, r].nonzero().flatten() for r in range(self.group_size)]
        tokens = torch.cat(per_dest)
        send = [t.numel() for t in per_dest]
        assert send == num_tokens_per_rank.tolist()
        ones = [1] * self.group_size
        recv = _exchange(torch.tensor(send), ones, ones, self.group).tolist()
        recv_x = _exchange(x[tokens], send, recv, self.group)
        recv_idx = recv_weights = counts = None
        if topk_idx is not None:
            assert topk_weights is not None and topk_weights.dtype == torch.float32
            local = num_tokens_per_expert.numel() // self.group_size
            dest = torch.cat([torch.full((n,), r) for r, n in enumerate(send)])
            idx = topk_idx[tokens] - (dest * local).unsqueeze(1)
            idx = torch.where((idx >= 0) & (idx < local) & (topk_idx[tokens] >= 0), idx, -1)
            recv_idx = _exchange(idx, send, recv, self.group)
            recv_weights = _exchange(topk_weights.detach()[tokens], send, recv, self.group)
            counts = torch.bincount(recv_idx[recv_idx >= 0], minlength=local).tolist()
        handle = (tokens, send, recv, x.shape[0])
        return recv_x, recv_idx, recv_weights, counts, handle, EventOverlap()

    def combine(
        self, x: torch.Tensor, handle: tuple, topk_weights: torch.Tensor | None = None, **_: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None, EventOverlap]:
        assert x.dim() == 2 and x.dtype in _DTYPES, (x.shape, x.dtype)
        tokens, send, recv, num_tokens = handle
        back = _exchange(x.detach(), recv, send, self.group)
        summed = torch.zeros(num_tokens, x.shape[1]).index_add(0, tokens, back.float())
        combined = summed.to(x.dtype)  # DeepEP accumulates in float32 too
        combined_weights = None
        if topk_weights is not None:
            w = _exchange(topk_weights.detach(), recv, send, self.group)
            combined_weights = w.new_zeros(num_tokens, w.shape[1]).index_add(0, tokens, w)
        return combined, combined_weights, EventOverlap()
