"""Cross-entropy of an LM head applied to hidden states, never materialising the full logits."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._labels import IGNORE_INDEX, check_chunk_len, flatten, normaliser

_Grads = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def _chunk_loss(
    h: torch.Tensor,
    targets: torch.Tensor,
    weight32: torch.Tensor,
    bias32: torch.Tensor | None,
    inv_norm: torch.Tensor,
    want_grad_logits: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed loss of one chunk of float32 hidden rows and, if asked, d(normalised loss)/d(logits)."""
    logits = h @ weight32.T if bias32 is None else torch.addmm(bias32, h, weight32.T)
    target_logits = logits.gather(1, targets)
    # Log-sum-exp and softmax share one exp pass, in place of the logits.
    row_max = logits.amax(dim=-1, keepdim=True)
    exp = logits.sub_(row_max).exp_()
    sum_exp = exp.sum(dim=-1, keepdim=True)
    loss_sum = (sum_exp.log() + row_max - target_logits).sum()
    if not want_grad_logits:
        return loss_sum, None
    # (softmax - onehot) / norm
    grad_logits = exp.mul_(inv_norm / sum_exp)
    grad_logits.scatter_add_(1, targets, -inv_norm.expand(targets.shape))
    return loss_sum, grad_logits


def _loss_and_grads(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    norm: torch.Tensor,
    chunk_len: int,
    ignore_index: int,
    needs_grad: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, _Grads]:
    """Normalised loss and, where asked, its grads wrt hidden [N, H], weight [V, H] and bias [V]."""
    need_hidden, need_weight, need_bias = needs_grad
    # Only tokens with a label do any work: ignored ones add nothing to the loss or the grads.
    rows = torch.nonzero(labels != ignore_index).squeeze(1)
    weight32 = weight.float()
    bias32 = bias.float() if bias is not None else None
    inv_norm = norm.reciprocal()
    loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.zeros_like(hidden) if need_hidden else None
    grad_weight = torch.zeros_like(weight32) if need_weight else None
    grad_bias = torch.zeros_like(bias32) if need_bias else None
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, rows.numel(), chunk_len):
            chunk_rows = rows[start : start + chunk_len]
            h = hidden.index_select(0, chunk_rows).float()
            targets = labels.index_select(0, chunk_rows)[:, None]
            chunk_loss, grad_logits = _chunk_loss(
                h, targets, weight32, bias32, inv_norm, any(needs_grad)
            )
            loss_sum += chunk_loss
            if grad_hidden is not None:
                grad_hidden.index_copy_(0, chunk_rows, (grad_logits @ weight32).to(hidden.dtype))
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T, h)
            if grad_bias is not None:
                grad_bias += grad_logits.sum(dim=0)
            # Free this chunk's logits before the next chunk allocates its own.
            del grad_logits
    return loss_sum * inv_norm, (grad_hidden, grad_weight, grad_bias)


class _FusedLinearCrossEntropyFn(torch.autograd.Function):
    """Computes the grads during forward; backward only scales them by the incoming gradient."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        norm: torch.Tensor,
        chunk_len: int,
        ignore_index: int,
    ) -> torch.Tensor:
        needs_grad = tuple(ctx.needs_input_grad[:3])
        loss, grads = _loss_and_grads(
            hidden, weight, bias, labels, norm, chunk_len, ignore_index, needs_grad
        )
        ctx.grads = grads
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.grads is None:
            raise RuntimeError(
                "FusedLinearCrossEntropy supports a single backward pass (no retain_graph reuse)"
            )
        grads, ctx.grads = ctx.grads, None
        # In place: the stored grads are released with ctx, so scaling them costs no extra memory.
        scaled = tuple(
            None if g is None else g.mul_(grad_output).to(dtype)
            for g, dtype in zip(grads, ctx.dtypes, strict=True)
        )
        return (*scaled, None, None, None, None)


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
        hidden, labels = flatten(hidden_states, labels, "hidden_states")
        if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != hidden.shape[1]:
            raise ValueError(
                f"lm_head_weight {tuple(lm_head_weight.shape)} does not match hidden size "
                f"{hidden.shape[1]}: expected [vocab, {hidden.shape[1]}]"
            )
        norm = normaliser(labels, num_label_tokens, self.ignore_index)
        inputs = (hidden, lm_head_weight, lm_head_bias)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
            return _FusedLinearCrossEntropyFn.apply(
                *inputs, labels, norm, self.chunk_len, self.ignore_index
            )
        loss, _ = _loss_and_grads(
            *inputs, labels, norm, self.chunk_len, self.ignore_index, (False, False, False)
        )
        return loss

    def extra_repr(self) -> str:
        return f"chunk_len={self.chunk_len}, ignore_index={self.ignore_index}"
