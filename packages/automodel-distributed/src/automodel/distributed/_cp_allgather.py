"""Context parallelism that all-gathers keys and values: any device, any backend, exact.

Each rank of the ``cp`` group holds ``2 * cp_size``-th chunks of every row's sequence: chunk
``r`` and chunk ``2 * cp_size - 1 - r`` (head and tail, so causal attention costs every rank the
same). Everything outside attention is per token and runs on the local chunks unchanged. In
attention, keys and values are all-gathered over the group (the backward reduce-scatters their
gradients back to their owners) and each local query chunk attends to the key prefix that ends
at it with a lower-right causal mask, which SDPA's flash and memory-efficient kernels handle
without a materialised mask. Packed rows (``documents=True``) get a materialised mask that
is also limited to each token's document, found from the gathered ``position_ids``. Unlike
torch's ring attention (``make_cp_batch_and_ctx``, CUDA only) this runs on CPU with gloo, so
the same code is tested here and used on GPUs; the price is the whole sequence's keys and
values on every rank during each attention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh

from ._cp import IGNORE_INDEX
from ._documents import document_ids

_UNSUPPORTED_HF_KWARGS = ("sliding_window", "softcap", "sinks", "s_aux")
#: the name `hf_attention` is registered under with transformers' AttentionInterface
HF_ATTENTION_NAME = "automodel_cp_allgather"


class _GatherRanks(torch.autograd.Function):
    """``[cp, *x.shape]`` from every rank's ``x``; the backward reduce-scatters the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        size = dist.get_world_size(group)
        out = x.new_empty(size * x.numel())  # flat: gloo wants the ranks' tensors end to end
        dist.all_gather_into_tensor(out, x.contiguous().view(-1), group=group)
        return out.view(size, *x.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = grad.new_empty(grad[0].numel())
        dist.reduce_scatter_tensor(out, grad.contiguous().view(-1), group=ctx.group)
        return out.view(grad.shape[1:]), None


def load_balanced_positions(seq_len: int, cp_size: int, cp_rank: int) -> torch.Tensor:
    """The sequence positions rank ``cp_rank`` holds: chunks ``r`` and ``2 * cp_size - 1 - r``."""
    if seq_len % (2 * cp_size):
        raise ValueError(
            f"sequence length {seq_len} is not a multiple of 2 * cp_size = {2 * cp_size}"
        )
    chunk = seq_len // (2 * cp_size)
    first, second = cp_rank * chunk, (2 * cp_size - 1 - cp_rank) * chunk
    return torch.cat([torch.arange(first, first + chunk), torch.arange(second, second + chunk)])


class AllGatherContextParallel:
    """Shard batches along the sequence over a ``cp`` group and run attention across the shards.

    ``shard_batch`` before the forward; ``attention`` (or ``hf_attention``, registered as a
    transformers attention implementation) inside it. Losses and gradients then need the usual
    data-parallel treatment over the dp × cp ranks (``dp_group(mesh, include_cp=True)``).
    """

    def __init__(self, cp: DeviceMesh | dist.ProcessGroup, documents: bool = False) -> None:
        if isinstance(cp, DeviceMesh):
            if cp.ndim != 1:
                raise ValueError(f"context parallelism needs a 1-D mesh, got {cp.ndim}-D")
            cp = cp.get_group()
        self.group = cp
        self.size = dist.get_world_size(cp)
        self.rank = dist.get_rank(cp)
        self.chunks = (self.rank, 2 * self.size - 1 - self.rank)  # the sequence chunks held here
        self.documents = documents
        # (the position_ids of the forward, its per-chunk document masks)
        self._masks_for: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def shard_batch(self, batch: Mapping[str, Any], pad_token_id: int = 0) -> dict[str, Any]:
        """This rank's chunks of every ``[batch, seq]`` tensor, with ``position_ids``.

        Rows are right-padded to a multiple of ``2 * cp_size`` (ids with ``pad_token_id``,
        ``labels`` with -100, the mask with 0); ``labels`` must already be next-token targets
        (shifted), since a shard cannot shift across its boundary. Padding must be on the right:
        the attention is causal over positions and ignores the mask, which is exact only when
        every padded key comes after every real token. Without ``documents`` the positions are
        ``0..seq-1``; with it the batch's own ``position_ids`` (packed rows: restarting at 0 for
        every document) are kept, and each token attends within its document only.
        """
        if "position_ids" in batch and not self.documents:
            raise ValueError(
                "packed rows (position_ids) need AllGatherContextParallel(..., documents=True); "
                "without it every token would attend across document boundaries"
            )
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        if mask is not None and bool((mask[:, 1:] > mask[:, :-1]).any()):
            raise ValueError(
                "context parallelism needs right padding (a real token after padding was found); "
                "pad on the right (tokenizer.padding_side = 'right')"
            )
        padded = -(-ids.shape[1] // (2 * self.size)) * (2 * self.size)
        out = pad_row_ends(batch, padded, pad_token_id)  # a packed row's padding: a document
        if "position_ids" not in batch:  # a plain row's positions continue into its padding
            out["position_ids"] = torch.arange(padded, device=ids.device).expand(len(ids), -1)
        index = load_balanced_positions(padded, self.size, self.rank).to(ids.device)
        for key, value in out.items():
            if isinstance(value, torch.Tensor) and value.dim() > 1:
                out[key] = value.index_select(1, index)
        return out

    @torch.no_grad()
    def gather_sequence(self, local: torch.Tensor, seq_len: int) -> torch.Tensor:
        """Every rank's part of a batch's rows (``[b, 2 * chunk, ...]`` in ``shard_batch``'s
        order) joined into whole rows ``[b, seq_len, ...]`` in position order, the padding
        ``shard_batch`` added cut off; without gradient (a frozen model's outputs)."""
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local.contiguous(), group=self.group)
        padded = local.shape[1] * self.size
        whole = local.new_empty((local.shape[0], padded, *local.shape[2:]))
        for rank, part in enumerate(parts):
            whole[:, load_balanced_positions(padded, self.size, rank).to(local.device)] = part
        return whole[:, :seq_len]

    def attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scale: float | None = None,
        dropout: float = 0.0,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Causal attention of the local queries over every rank's keys: ``[b, heads, local, d]``.

        ``query`` is ``[b, heads, local, d]`` and ``key``/``value`` ``[b, kv_heads, local, d]``
        (grouped-query attention when ``kv_heads`` divides ``heads``), in ``shard_batch`` order.
        With ``documents``, ``position_ids`` (``[b, local]``, as ``shard_batch`` returned them)
        mark the documents, and a query sees the keys of its own document only.
        """
        heads, kv_heads = query.shape[1], key.shape[1]
        if heads % kv_heads:
            raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} key heads")
        local = query.shape[2]
        if local % 2 or key.shape[2] != local:
            raise ValueError(f"expected the same even local length for q/k/v, got {local}")
        chunk = local // 2
        masks = self._document_masks(position_ids, chunk) if self.documents else None
        keys, values = (self._natural_order(t) for t in (key, value))
        outs = []
        for half, index in enumerate(self.chunks):
            q = query[:, :, half * chunk : (half + 1) * chunk]
            end = (index + 1) * chunk  # this chunk sees every key up to its own last position
            k, v = keys[:, :, :end], values[:, :, :end]
            if heads != kv_heads:  # the lower-right causal kernels take equal head counts
                k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
            mask = _causal_lower_right(chunk, end) if masks is None else masks[half]
            outs.append(F.scaled_dot_product_attention(q, k, v, mask, dropout, scale=scale))
        return torch.cat(outs, dim=2)

    def _document_masks(self, position_ids: torch.Tensor | None, chunk: int) -> list[torch.Tensor]:
        """Per local chunk, the ``[b, 1, chunk, keys]`` mask: causal, within each document.

        Built once per forward (from the gathered positions) and shared by every layer, which
        also lets autograd keep one copy for all their backwards.
        """
        if position_ids is None:
            raise ValueError("attention over documents needs the position_ids of the shard")
        cached = self._masks_for
        if cached is not None and cached[0] is position_ids:  # the same forward's next layer
            return cached[1]
        with torch.no_grad():
            positions = self._natural_order(position_ids[:, None, :, None])[:, 0, :, 0]
            documents = document_ids(positions)
            masks = []
            for index in self.chunks:
                end = (index + 1) * chunk
                same = documents[:, end - chunk : end, None] == documents[:, None, :end]
                causal = torch.ones(chunk, end, dtype=torch.bool, device=same.device)
                masks.append((same & causal.tril(end - chunk)).unsqueeze(1))
        self._masks_for = (position_ids, masks)
        return masks

    def _natural_order(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's ``[b, h, 2 * chunk, d]`` gathered into ``[b, h, seq, d]`` in position order."""
        gathered = _GatherRanks.apply(x, self.group)  # [cp, b, h, 2 * chunk, d]
        cp, b, h, local, d = gathered.shape
        chunks = gathered.view(cp, b, h, 2, local // 2, d).permute(1, 2, 0, 3, 4, 5)
        chunks = chunks.reshape(b, h, 2 * cp, local // 2, d)  # (rank, half) order
        # position chunk j is held by rank j (first half) or rank 2cp-1-j (second half)
        order = [2 * j if j < cp else 2 * (2 * cp - 1 - j) + 1 for j in range(2 * cp)]
        order_t = torch.tensor(order, device=x.device)
        return chunks.index_select(2, order_t).reshape(b, h, cp * local, d)

    def hf_attention(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        """``attention`` with the signature of a transformers ``AttentionInterface`` function."""
        if not getattr(module, "is_causal", True):
            raise ValueError(
                f"context parallelism needs causal attention; {type(module).__name__} is not"
            )
        used = [k for k in _UNSUPPORTED_HF_KWARGS if kwargs.get(k) is not None]
        if used:
            raise ValueError(
                f"context parallelism does not support attention with {', '.join(used)} "
                f"({type(module).__name__}); set cp_size: 1 for this model"
            )
        positions = kwargs.get("position_ids")
        out = self.attention(query, key, value, scaling, dropout, positions)
        return out.transpose(1, 2).contiguous(), None


def pad_row_ends(batch: Mapping[str, Any], length: int, pad_token_id: int = 0) -> dict[str, Any]:
    """`batch` with every ``[batch, seq]`` tensor padded at the end of its rows to `length`:
    ids with `pad_token_id`, ``labels`` with -100, others (the attention mask) with 0, and
    ``position_ids`` counting from 0 again (the padding is a document of its own, which no real
    token sees under causal attention). A ValueError for a tensor of another length."""
    seq_len = batch["input_ids"].shape[1]
    fills = {"input_ids": pad_token_id, "labels": IGNORE_INDEX}
    out: dict[str, Any] = dict(batch)
    for key, value in batch.items():
        if not (isinstance(value, torch.Tensor) and value.dim() > 1):
            continue
        if value.shape[1] != seq_len:
            raise ValueError(f"batch[{key!r}] has {value.shape[1]} positions, input_ids has {seq_len}")  # fmt: skip
        if key == "position_ids":
            tail = torch.arange(length - seq_len, dtype=value.dtype, device=value.device)
            out[key] = torch.cat([value, tail.expand(value.shape[0], -1)], dim=1)
        else:
            out[key] = _pad(value, length - seq_len, fills.get(key, 0))
    return out


def _pad(value: torch.Tensor, amount: int, fill: int) -> torch.Tensor:
    if amount == 0:
        return value
    return torch.cat([value, value.new_full((value.shape[0], amount, *value.shape[2:]), fill)], 1)


__all__ = ["AllGatherContextParallel", "load_balanced_positions", "pad_row_ends"]


def _causal_lower_right(rows: int, columns: int) -> Any:
    """torch's lower-right causal mask, imported on first use: torch.nn.attention.bias pulls in
    torch._dynamo, about a second at start-up that only context parallelism needs."""
    from torch.nn.attention.bias import causal_lower_right

    return causal_lower_right(rows, columns)
