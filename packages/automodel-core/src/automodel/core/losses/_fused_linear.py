"""Cross-entropy of an LM head applied to hidden states, never materialising the full logits.

The chunk loop, the grads it accumulates and the autograd Function are shared with the other
fused-linear losses (`FusedLinearKDLoss`): each supplies only a `ChunkLoss`, the loss of one
chunk of float32 logits and its gradient wrt those logits. A head sharded over the vocabulary
(tensor parallelism: a DTensor `Shard(0)`) computes each rank's share of the logits; the
cross-entropy joins them with three small all-reduces per chunk (max, sum of exponentials,
target logit) and the hidden states' gradient with one at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Shard

from ._labels import IGNORE_INDEX, check_chunk_len, flatten, normaliser

_Grads = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]

ChunkLoss = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool],
    tuple[torch.Tensor, torch.Tensor | None],
]
"""`(rows, logits, targets, inv_norm, want_grad) -> (sums, grad_logits)` of one chunk.

`logits` [C, V] are the float32 logits of `C` label rows (the chunk loss may overwrite them),
`rows` [C] their indices in the flattened batch and `targets` [C, 1] their labels. `sums` [k]
are summed (not yet normalised) losses: the first is the one differentiated, the others are
only reported. `grad_logits`, when `want_grad`, is d(sums[0] * inv_norm)/d(logits).
"""


def linear32(h: torch.Tensor, weight32: torch.Tensor, bias32: torch.Tensor | None) -> torch.Tensor:
    """`h @ weight32.T + bias32` in float32: a new tensor, free to be overwritten."""
    return h @ weight32.T if bias32 is None else torch.addmm(bias32, h, weight32.T)


def check_head(weight: torch.Tensor, hidden: torch.Tensor, name: str) -> None:
    """Raise ValueError unless `weight` is a [vocab, H] head for the flat hidden states [N, H]."""
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"{name} {tuple(weight.shape)} does not match hidden size "
            f"{hidden.shape[1]}: expected [vocab, {hidden.shape[1]}]"
        )


def cross_entropy_chunk(
    rows: torch.Tensor,
    logits: torch.Tensor,
    targets: torch.Tensor,
    inv_norm: torch.Tensor,
    want_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`ChunkLoss` of cross-entropy: summed loss [1] and, if asked, (softmax - onehot) / norm."""
    return _cross_entropy(logits, targets, inv_norm, want_grad)


def vocab_parallel_cross_entropy_chunk(group: Any, offset: int) -> ChunkLoss:
    """`ChunkLoss` of cross-entropy over logits of the vocabulary ids `offset`... held here,
    the rest on the other ranks of `group`: the same sums and this rank's part of the grads."""

    def chunk(
        rows: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        inv_norm: torch.Tensor,
        want_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return _cross_entropy(logits, targets, inv_norm, want_grad, group, offset)

    return chunk


def _cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    inv_norm: torch.Tensor,
    want_grad: bool,
    group: Any = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-entropy of a chunk of logits; with `group`, the logits of this rank's vocabulary
    ids `offset`..., the row maximum, sum of exponentials and target logit joined over it."""

    def joined(value: torch.Tensor, op: Any = dist.ReduceOp.SUM) -> torch.Tensor:
        if group is not None:
            dist.all_reduce(value, op=op, group=group)
        return value

    held = None  # without a group every target is held here
    local = targets
    if group is not None:
        local = targets - offset
        held = (local >= 0) & (local < logits.shape[1])
        local = local.clamp(0, logits.shape[1] - 1)
    target_logits = logits.gather(1, local)
    if held is not None:
        target_logits = joined(target_logits * held)  # the target's rank: its logit
    # Log-sum-exp and softmax share one exp pass, in place of the logits.
    row_max = joined(logits.amax(dim=-1, keepdim=True), dist.ReduceOp.MAX)
    exp = logits.sub_(row_max).exp_()
    sum_exp = joined(exp.sum(dim=-1, keepdim=True))
    loss_sum = (sum_exp.log() + row_max - target_logits).sum().reshape(1)
    if not want_grad:
        return loss_sum, None
    grad_logits = exp.mul_(inv_norm / sum_exp)
    step = -inv_norm.expand(local.shape) if held is None else -inv_norm * held.to(exp.dtype)
    grad_logits.scatter_add_(1, local, step)
    return loss_sum, grad_logits


def vocab_shard(
    weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, Any, int]:
    """(this rank's rows of the head, of its bias, the group sharing the vocabulary out, the
    first vocabulary id held here) of a head sharded over the vocabulary (a 1-D DTensor
    `Shard(0)`); a head held whole (a plain tensor, or a replicated DTensor) gives group None."""
    if not isinstance(weight, DTensor):
        return weight, bias, None, 0
    mesh, placements = weight.device_mesh, weight.placements
    if mesh.ndim != 1 or not placements[0].is_shard(0):
        whole = (t.full_tensor() if isinstance(t, DTensor) else t for t in (weight, bias))
        return *whole, None, 0
    rows = -(-weight.shape[0] // mesh.size())  # torch.chunk's share: the last rank's may be short
    local_bias = bias.to_local() if isinstance(bias, DTensor) else bias
    return weight.to_local(), local_bias, mesh.get_group(), mesh.get_local_rank() * rows


def _whole_rows(
    hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, group: Any
) -> torch.Tensor:
    """`hidden` of whole rows: under sequence parallelism (a vocabulary-sharded head whose tp
    ranks each hold a part of every row, in order) gathered from the head's tp group."""
    if isinstance(hidden, DTensor):
        return hidden.full_tensor()
    if group is None or hidden.dim() < 2 or labels.dim() < 1:
        return hidden
    parts = weight.device_mesh.size()
    if hidden.shape[-2] == labels.shape[-1] or hidden.shape[-2] * parts != labels.shape[-1]:
        return hidden
    sharded = DTensor.from_local(hidden, weight.device_mesh, [Shard(hidden.dim() - 2)])
    return sharded.full_tensor()


def _loss_and_grads(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    norm: torch.Tensor,
    chunk_len: int,
    ignore_index: int,
    chunk_loss: ChunkLoss,
    num_sums: int,
    vocab_group: Any,
    needs_grad: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, _Grads]:
    """Normalised sums [num_sums] and, where asked, grads of the first wrt hidden, weight, bias.

    `vocab_group`: the ranks holding the rest of the vocabulary's rows (None: all here); the
    hidden states' gradient is then summed over them."""
    need_hidden, need_weight, need_bias = needs_grad
    # Only tokens with a label do any work: ignored ones add nothing to the loss or the grads.
    rows = torch.nonzero(labels != ignore_index).squeeze(1)
    weight32 = weight.float()
    bias32 = bias.float() if bias is not None else None
    inv_norm = norm.reciprocal()
    sums = torch.zeros(num_sums, dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.zeros_like(hidden) if need_hidden else None
    grad_weight = torch.zeros_like(weight32) if need_weight else None
    grad_bias = torch.zeros_like(bias32) if need_bias else None
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, rows.numel(), chunk_len):
            chunk_rows = rows[start : start + chunk_len]
            h = hidden.index_select(0, chunk_rows).float()
            targets = labels.index_select(0, chunk_rows)[:, None]
            logits = linear32(h, weight32, bias32)
            chunk_sums, grad_logits = chunk_loss(
                chunk_rows, logits, targets, inv_norm, any(needs_grad)
            )
            del logits  # the chunk loss may have handed its memory on as grad_logits
            sums += chunk_sums
            if grad_hidden is not None:
                grad_hidden.index_copy_(0, chunk_rows, (grad_logits @ weight32).to(hidden.dtype))
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T, h)
            if grad_bias is not None:
                grad_bias += grad_logits.sum(dim=0)
            # Free this chunk's logits before the next chunk allocates its own.
            del grad_logits
    if grad_hidden is not None and vocab_group is not None:
        dist.all_reduce(grad_hidden, group=vocab_group)  # each rank's vocabulary's share
    return sums * inv_norm, (grad_hidden, grad_weight, grad_bias)


class _FusedLinearFn(torch.autograd.Function):
    """Computes the grads during forward; backward only scales them by the incoming gradient.

    Returns the normalised loss (differentiable) and the other normalised sums (not).
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *args: Any,  # labels, norm, chunk_len, ignore_index, chunk_loss, num_sums, group
    ) -> tuple[torch.Tensor, torch.Tensor]:
        needs_grad = tuple(ctx.needs_input_grad[:3])
        sums, grads = _loss_and_grads(hidden, weight, bias, *args, needs_grad)
        ctx.num_args = len(args)
        ctx.grads = grads
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        parts = sums[1:]
        ctx.mark_non_differentiable(parts)
        # a copy, not a view of `sums`: FSDP2 hooks the output of the module that returns it
        return sums[0].clone(), parts

    @staticmethod
    def backward(
        ctx: Any, grad_output: torch.Tensor, _grad_parts: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        if ctx.grads is None:
            raise RuntimeError(
                "fused linear losses support a single backward pass (no retain_graph reuse)"
            )
        grads, ctx.grads = ctx.grads, None
        # In place: the stored grads are released with ctx, so scaling them costs no extra memory.
        scaled = tuple(
            None if g is None else g.mul_(grad_output).to(dtype)
            for g, dtype in zip(grads, ctx.dtypes, strict=True)
        )
        return (*scaled, *(None,) * ctx.num_args)


def fused_linear_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    norm: torch.Tensor,
    chunk_len: int,
    ignore_index: int,
    chunk_loss: ChunkLoss = cross_entropy_chunk,
    num_sums: int = 1,
    vocab_group: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of `hidden` [N, H] through the head `weight` [V, H] chunk by chunk, and its parts.

    Returns the normalised first sum of `chunk_loss` (differentiable wrt hidden, weight and
    bias; its grads are computed here, in the forward) and the other normalised sums [k - 1],
    which carry no gradient. Without grad mode or inputs that need grads, only the loss is
    computed. `vocab_group`: `weight` holds this rank's rows of a head sharded over the
    vocabulary among that group (see `vocab_parallel_cross_entropy_chunk`).
    """
    inputs = (hidden, weight, bias)
    args = (labels, norm, chunk_len, ignore_index, chunk_loss, num_sums, vocab_group)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _FusedLinearFn.apply(*inputs, *args)
    sums, _ = _loss_and_grads(*inputs, *args, (False, False, False))
    return sums[0], sums[1:]


class FusedLinearCrossEntropy(nn.Module):
    """`MaskedCrossEntropy` of `hidden @ W.T + b`, computed `chunk_len` label tokens at a time.

    Beyond the grads it returns, the memory it needs is about one chunk of float32 logits,
    `chunk_len * vocab * 4` bytes: 250 MiB for the default 512 tokens at a 128k vocabulary.
    Smaller chunks save memory at the cost of smaller matmuls (see benchmarks/loss_memory.py).
    """

    def __init__(self, chunk_len: int = 512, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.chunk_len = check_chunk_len(chunk_len)
        self.ignore_index = ignore_index

    def forward(
        self,
        hidden_states: torch.Tensor,
        lm_head_weight: torch.Tensor,
        labels: torch.Tensor,
        num_label_tokens: int | torch.Tensor | None = None,
        lm_head_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of hidden states [..., H] through the LM head [V, H] against aligned labels [...]."""
        weight, bias, group, offset = vocab_shard(lm_head_weight, lm_head_bias)
        hidden_states = _whole_rows(hidden_states, labels, lm_head_weight, group)
        hidden, labels = flatten(hidden_states, labels, "hidden_states")
        check_head(weight, hidden, "lm_head_weight")
        norm = normaliser(labels, num_label_tokens, self.ignore_index)
        chunk_loss = cross_entropy_chunk
        if group is not None:  # tensor parallel: this rank's share of the vocabulary
            chunk_loss = vocab_parallel_cross_entropy_chunk(group, offset)
        loss, _ = fused_linear_loss(
            hidden, weight, bias, labels, norm, self.chunk_len, self.ignore_index, chunk_loss,
            vocab_group=group,
        )  # fmt: skip
        return loss

    def extra_repr(self) -> str:
        return f"chunk_len={self.chunk_len}, ignore_index={self.ignore_index}"
