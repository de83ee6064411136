"""Knowledge distillation from a frozen teacher's LM head, never materialising the full logits."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._fused_linear import check_head, fused_linear_loss, linear32
from ._labels import IGNORE_INDEX, check_chunk_len, flatten, normaliser


class _KDChunk:
    """`ChunkLoss` of `(1 - r) * CE + r * T^2 * KL(p_t || p_s)`; sums [loss, CE, KL].

    Holds the teacher: its flat hidden states [N, Ht] and float32 head. Of the float32 [C, V]
    buffers, at most three exist at once (the student's logits, the teacher's and one more:
    a temporary of `torch.logsumexp` or `exp`).
    """

    def __init__(
        self,
        teacher_hidden: torch.Tensor,
        teacher_weight32: torch.Tensor,
        teacher_bias32: torch.Tensor | None,
        kd_ratio: float,
        temperature: float,
    ):
        self.teacher_hidden = teacher_hidden
        self.teacher_weight32 = teacher_weight32
        self.teacher_bias32 = teacher_bias32
        self.kd_ratio = kd_ratio
        self.temperature = temperature

    def __call__(
        self,
        rows: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        inv_norm: torch.Tensor,
        want_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        r, t = self.kd_ratio, self.temperature
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        ce = (lse - logits.gather(1, targets)).sum()
        # log p_t = log_softmax(teacher / T), in place of the teacher's logits.
        h = self.teacher_hidden.index_select(0, rows).float()
        log_pt = linear32(h, self.teacher_weight32, self.teacher_bias32).div_(t)
        log_pt.sub_(torch.logsumexp(log_pt, dim=-1, keepdim=True))
        # log p_s = log_softmax(student / T), in place of the student's logits.
        log_ps = logits.div_(t)
        lse_st = torch.logsumexp(log_ps, dim=-1, keepdim=True)
        log_ps.sub_(lse_st)
        p_t = log_pt.exp()
        # Summed over tokens and vocabulary: p_t * (log p_t - log p_s), in place of log p_t.
        kl = log_pt.sub_(log_ps).mul_(p_t).sum()
        del log_pt
        sums = torch.stack([(1 - r) * ce + r * t * t * kl, ce, kl])
        if not want_grad:
            return sums, None
        # d/dz [(1 - r) CE + r T^2 KL] = (1 - r) (softmax(z) - onehot) + r T (p_s - p_t)
        grad_logits = p_t.mul_(-r * t).add_(log_ps.exp(), alpha=r * t)
        # softmax(z) = exp(T log p_s + T lse_st - lse), in place of log p_s (T = 1: exp(z - lse)).
        probs = log_ps.mul_(t).add_(t * lse_st - lse).exp_()
        grad_logits.add_(probs, alpha=1 - r).scatter_add_(
            1, targets, probs.new_full((), r - 1).expand(targets.shape)
        )
        return sums, grad_logits.mul_(inv_norm)


class FusedLinearKDLoss(nn.Module):
    """Distillation loss of a student LM head against a frozen teacher's, `chunk_len` tokens at a time.

    `loss = (1 - kd_ratio) * CE + kd_ratio * T^2 * KL`, where CE is the student's cross-entropy
    against the labels and KL = sum_v p_t(v) (log p_t(v) - log p_s(v)) with
    p = softmax(logits / T) of teacher and student. Both are summed over the tokens whose
    label is not `ignore_index` (the answer tokens) and divided by `num_label_tokens` (or this
    batch's label count), exactly as `MaskedCrossEntropy`; `kd_ratio=0` is
    `FusedLinearCrossEntropy`. All math is float32.

    Like `FusedLinearCrossEntropy`, it never builds the full [tokens, vocab] logits of either
    model: per chunk of label tokens it computes both heads' logits, the loss and the student's
    grads (hidden states, head weight, bias), and backward only scales them. Beyond the grads
    and the float32 copies of bfloat16 head weights, it needs about three chunks of float32
    logits, `3 * chunk_len * vocab * 4` bytes: 0.73 GiB for 512 tokens at a 128k vocabulary
    (see benchmarks/kd_loss_memory.py). The teacher gets no gradient: its tensors are detached.
    """

    def __init__(
        self,
        kd_ratio: float = 0.5,
        temperature: float = 1.0,
        chunk_len: int = 512,
        ignore_index: int = IGNORE_INDEX,
    ):
        super().__init__()
        if not 0.0 <= kd_ratio <= 1.0:
            raise ValueError(f"kd_ratio must be in [0, 1], got {kd_ratio!r}")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.kd_ratio = float(kd_ratio)
        self.temperature = float(temperature)
        self.chunk_len = check_chunk_len(chunk_len)
        self.ignore_index = ignore_index

    def forward(
        self,
        student_hidden: torch.Tensor,
        student_head_weight: torch.Tensor,
        teacher_hidden: torch.Tensor,
        teacher_head_weight: torch.Tensor,
        labels: torch.Tensor,
        num_label_tokens: int | torch.Tensor | None = None,
        student_head_bias: torch.Tensor | None = None,
        teacher_head_bias: torch.Tensor | None = None,
        return_parts: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss of student hidden [..., H] / head [V, H] against teacher hidden [..., Ht] / head [V, Ht].

        With `return_parts`, returns `(loss, ce, kl)`: `ce` and `kl` normalised like the loss
        (`kl` without the `kd_ratio * T^2` factor) and detached, for logging.
        """
        hidden, flat_labels = flatten(student_hidden, labels, "student_hidden")
        teacher, _ = flatten(teacher_hidden.detach(), labels, "teacher_hidden")
        check_head(student_head_weight, hidden, "student_head_weight")
        check_head(teacher_head_weight, teacher, "teacher_head_weight")
        if teacher_head_weight.shape[0] != student_head_weight.shape[0]:
            raise ValueError(
                f"teacher_head_weight {tuple(teacher_head_weight.shape)} and student_head_weight "
                f"{tuple(student_head_weight.shape)} have different vocabulary sizes"
            )
        teacher_bias = None if teacher_head_bias is None else teacher_head_bias.detach().float()
        chunk_loss = _KDChunk(
            teacher,
            teacher_head_weight.detach().float(),
            teacher_bias,
            self.kd_ratio,
            self.temperature,
        )
        norm = normaliser(flat_labels, num_label_tokens, self.ignore_index)
        loss, (ce, kl) = fused_linear_loss(
            hidden,
            student_head_weight,
            student_head_bias,
            flat_labels,
            norm,
            self.chunk_len,
            self.ignore_index,
            chunk_loss,
            num_sums=3,
        )
        return (loss, ce, kl) if return_parts else loss

    def extra_repr(self) -> str:
        return (
            f"kd_ratio={self.kd_ratio}, temperature={self.temperature}, "
            f"chunk_len={self.chunk_len}, ignore_index={self.ignore_index}"
        )
