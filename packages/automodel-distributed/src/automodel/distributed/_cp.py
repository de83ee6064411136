"""Context parallelism: shard a batch along the sequence and run attention as a ring.

Built on ``torch.distributed.tensor.experimental.context_parallel``: inside the returned context
the batch tensors hold this rank's slice of the sequence (head-tail load balanced for causal
attention) and ``F.scaled_dot_product_attention`` is replaced by torch's ring attention. That
ring attention is implemented for the CUDA SDPA kernels only (flash, memory-efficient, cuDNN),
so context parallelism needs CUDA and a model using ``attn_implementation="sdpa"``.

For Hugging Face causal LMs the batch is prepared so the model sees each token's true position:
``position_ids`` (``0..seq-1``) are added and sharded with the tokens; ``labels`` are shifted
into ``shift_labels`` before sharding (the loss of a shard cannot shift across the shard
boundary; Hugging Face's ``ForCausalLMLoss`` uses ``shift_labels`` when given); and
``attention_mask`` becomes an all-ones mask of the local length, which keeps Hugging Face on the
maskless ``is_causal`` SDPA path that the ring supports (padding masks are refused). Average
the loss and gradients over the CP ranks (FSDP over a mesh that includes "cp" does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.distributed.device_mesh import DeviceMesh

CPU_ERROR = (
    "context parallelism needs CUDA (torch's ring attention runs on the CUDA SDPA kernels: "
    "flash, memory-efficient or cuDNN attention); set cp_size: 1 on CPU"
)

# automodel.core.losses.IGNORE_INDEX; this package may not import core, so its one copy.
IGNORE_INDEX = -100


def _check_device(cp_mesh: DeviceMesh, tensors: Iterable[torch.Tensor]) -> None:
    if cp_mesh.device_type != "cuda" or any(t.device.type != "cuda" for t in tensors):
        raise RuntimeError(CPU_ERROR)


def make_cp_batch_and_ctx(
    cp_mesh: DeviceMesh,
    batch: Mapping[str, Any],
    seq_dim: int = 1,
    extra_buffers: Iterable[torch.Tensor] = (),
    extra_seq_dims: Iterable[int] = (),
    *,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[dict[str, Any], contextlib.AbstractContextManager]:
    """``(batch, context)``: run the model's forward and backward inside ``context``.

    ``batch``: a dict with ``input_ids`` (``[batch, seq]``) and optionally ``labels``,
    ``position_ids``, ``attention_mask`` (all ones) and other tensors with the sequence on
    ``seq_dim`` (they are sharded too; non-tensors pass through). ``extra_buffers`` (with their
    ``extra_seq_dims``) are further tensors to shard, such as precomputed rotary tables. The
    sequence length must be a multiple of ``2 * cp_size``. The returned tensors are sharded in
    place when the context is entered and stay sharded afterwards.

    A 1-rank mesh returns the batch unchanged and a null context. Raises ``RuntimeError`` on
    CPU: torch's ring attention exists only for CUDA kernels.
    """
    batch = dict(batch)
    if cp_mesh.size() == 1:
        return batch, contextlib.nullcontext()
    extra_buffers, extra_seq_dims = list(extra_buffers), list(extra_seq_dims)
    if len(extra_buffers) != len(extra_seq_dims):
        raise ValueError("extra_buffers and extra_seq_dims must have the same length")
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    _check_device(cp_mesh, [*tensors.values(), *extra_buffers])
    if "input_ids" not in tensors:
        raise ValueError("the context-parallel batch needs input_ids")
    input_ids = tensors["input_ids"]
    seq_len = input_ids.shape[seq_dim]
    cp_size = cp_mesh.size()
    if seq_len % (2 * cp_size):
        raise ValueError(
            f"sequence length {seq_len} is not a multiple of 2 * cp_size = {2 * cp_size}: "
            "pad the batch (labels -100) to a multiple"
        )
    if "attention_mask" in tensors and not bool(tensors["attention_mask"].all()):
        raise ValueError(
            "context parallelism supports causal attention without padding: drop the "
            "attention_mask (mask padded positions with labels -100, or pack sequences)"
        )

    if "position_ids" not in tensors:
        shape = [1] * input_ids.ndim
        shape[seq_dim] = seq_len
        positions = torch.arange(seq_len, device=input_ids.device).view(shape)
        tensors["position_ids"] = positions.expand_as(input_ids).contiguous()
    if "labels" in tensors and "shift_labels" not in tensors:
        labels = tensors["labels"]
        pad = torch.full_like(labels.narrow(seq_dim, 0, 1), ignore_index)
        tensors["shift_labels"] = torch.cat([labels.narrow(seq_dim, 1, seq_len - 1), pad], seq_dim)
    # HF skips mask creation (and uses SDPA's is_causal) for an all-ones mask of the local length
    tensors["attention_mask"] = torch.ones_like(input_ids)
    # the buffers are resized in place: give each its own storage
    tensors = {k: v.clone() for k, v in tensors.items()}
    batch.update(tensors)

    from torch.distributed.tensor.experimental import context_parallel

    buffers = [*tensors.values(), *extra_buffers]
    seq_dims = [seq_dim] * len(tensors) + extra_seq_dims
    ctx = context_parallel(
        cp_mesh, buffers=buffers, buffer_seq_dims=seq_dims, no_restore_buffers=set(tensors.values())
    )
    return batch, ctx


__all__ = ["CPU_ERROR", "make_cp_batch_and_ctx"]
