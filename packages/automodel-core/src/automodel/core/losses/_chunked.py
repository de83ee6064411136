"""Cross-entropy on existing logits, upcast to float32 one chunk of tokens at a time."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._labels import IGNORE_INDEX, check_chunk_len, flatten, normaliser


def _chunks_with_labels(valid: torch.Tensor, chunk_len: int) -> list[tuple[int, int]]:
    """(start, end) of every chunk of `chunk_len` tokens holding at least one label."""
    num_tokens = valid.numel()
    padded = torch.cat([valid, valid.new_zeros(-num_tokens % chunk_len)])
    has_labels = padded.view(-1, chunk_len).any(dim=1).tolist()
    return [
        (i * chunk_len, min((i + 1) * chunk_len, num_tokens))
        for i, keep in enumerate(has_labels)
        if keep
    ]


class _ChunkedCrossEntropyFn(torch.autograd.Function):
    """Saves the log-sum-exp per token and recomputes the softmax chunk by chunk in backward."""

    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        labels: torch.Tensor,
        norm: torch.Tensor,
        chunk_len: int,
        ignore_index: int,
    ) -> torch.Tensor:
        valid = labels != ignore_index
        targets = labels.masked_fill(~valid, 0)
        chunks = _chunks_with_labels(valid, chunk_len)
        lse = torch.zeros(labels.shape, dtype=torch.float32, device=logits.device)
        loss_sum = torch.zeros((), dtype=torch.float32, device=logits.device)
        with torch.autocast(logits.device.type, enabled=False):
            for start, end in chunks:
                chunk = logits[start:end].float()
                chunk_lse = torch.logsumexp(chunk, dim=-1)
                target_logit = chunk.gather(1, targets[start:end, None]).squeeze(1)
                loss_sum += torch.where(valid[start:end], chunk_lse - target_logit, 0.0).sum()
                lse[start:end] = chunk_lse
                del chunk  # before the next chunk's float32 copy is made
        ctx.save_for_backward(logits, targets, valid, lse, norm)
        ctx.chunks = chunks
        return loss_sum / norm

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        logits, targets, valid, lse, norm = ctx.saved_tensors
        grad = torch.zeros_like(logits)
        scale = valid * (grad_output / norm)
        with torch.autocast(logits.device.type, enabled=False):
            for start, end in ctx.chunks:
                # Out of place: for float32 logits `.float()` is the saved tensor itself.
                probs = (logits[start:end].float() - lse[start:end, None]).exp_()
                index = targets[start:end, None]
                probs.scatter_add_(1, index, probs.new_full(index.shape, -1.0))
                grad[start:end] = probs.mul_(scale[start:end, None])
                del probs
        return grad, None, None, None, None


class ChunkedCrossEntropy(nn.Module):
    """`MaskedCrossEntropy` that never holds the float32 copy of more than `chunk_len` tokens' logits."""

    def __init__(self, chunk_len: int = 1024, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.chunk_len = check_chunk_len(chunk_len)
        self.ignore_index = ignore_index

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        num_label_tokens: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of logits [..., V] against labels [...] already aligned (see `shift_labels`)."""
        logits, labels = flatten(logits, labels, "logits")
        norm = normaliser(labels, num_label_tokens, self.ignore_index)
        return _ChunkedCrossEntropyFn.apply(logits, labels, norm, self.chunk_len, self.ignore_index)

    def extra_repr(self) -> str:
        return f"chunk_len={self.chunk_len}, ignore_index={self.ignore_index}"
