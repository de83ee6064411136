"""Tests of automodel.core.losses.FusedLinearKDLoss against full-logit distillation in plain torch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from automodel.core.losses import (
    IGNORE_INDEX,
    FusedLinearCrossEntropy,
    FusedLinearKDLoss,
    MaskedCrossEntropy,
    count_label_tokens,
)

B, S, H, HT, V = 2, 11, 12, 20, 40  # N = 22 tokens; the teacher is wider than the student
TOL = {"rtol": 1e-5, "atol": 1e-6}


def make_batch(seed: int = 0, dtype: torch.dtype = torch.float32):
    """Student and teacher hidden states, heads and biases, and labels with ignored positions."""
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(B, S, H, generator=gen).to(dtype)
    weight = (torch.randn(V, H, generator=gen) / H**0.5).to(dtype)
    bias = (torch.randn(V, generator=gen) * 0.1).to(dtype)
    teacher = torch.randn(B, S, HT, generator=gen).to(dtype)
    t_weight = (2 * torch.randn(V, HT, generator=gen) / HT**0.5).to(dtype)
    t_bias = (torch.randn(V, generator=gen) * 0.1).to(dtype)
    labels = torch.randint(0, V, (B, S), generator=gen)
    labels[torch.rand(B, S, generator=gen) < 0.3] = IGNORE_INDEX
    labels[0, :5] = IGNORE_INDEX  # a prompt: a run of tokens without labels
    return student, weight, bias, teacher, t_weight, t_bias, labels


def leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def reference(batch, kd_ratio, temperature, num_label_tokens=None):
    """Full float32 logits of both models, log_softmax and an explicit KL sum, through autograd.

    Returns (loss, ce, kl) and the grads of the loss wrt student hidden, weight and bias.
    """
    student, weight, bias, teacher, t_weight, t_bias, labels = batch
    h, w, b = leaves(student.float(), weight.float(), bias.float())
    logits = (h @ w.T + b).view(-1, V)
    t_logits = (teacher.float() @ t_weight.float().T + t_bias.float()).view(-1, V)
    flat = labels.view(-1)
    mask = flat != IGNORE_INDEX
    num = mask.sum() if num_label_tokens is None else num_label_tokens
    ce = F.cross_entropy(logits[mask], flat[mask], reduction="sum") / num
    log_ps = torch.log_softmax(logits[mask] / temperature, dim=-1)
    log_pt = torch.log_softmax(t_logits[mask] / temperature, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum() / num
    loss = (1 - kd_ratio) * ce + kd_ratio * temperature**2 * kl
    loss.backward()
    return (loss.detach(), ce.detach(), kl.detach()), (h.grad, w.grad, b.grad)


def fused(batch, kd_ratio, temperature, chunk_len=5, num_label_tokens=None, bias=True, scale=1.0):
    """FusedLinearKDLoss on fresh student leaves: (loss, ce, kl) and the student's grads.

    Backward (of `scale * loss`) runs only in grad mode; under no_grad the grads are None.
    """
    student, weight, s_bias, teacher, t_weight, t_bias, labels = batch
    h, w, b = leaves(student, weight, s_bias)
    loss_fn = FusedLinearKDLoss(kd_ratio, temperature, chunk_len)
    loss, ce, kl = loss_fn(
        h, w, teacher, t_weight, labels, num_label_tokens,
        student_head_bias=b if bias else None,
        teacher_head_bias=t_bias if bias else None,
        return_parts=True,
    )  # fmt: skip
    if torch.is_grad_enabled():
        (scale * loss).backward()
    return (loss, ce, kl), (h.grad, w.grad, b.grad)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("kd_ratio", [0.0, 0.3, 1.0])
def test_loss_parts_and_grads_match_full_logit_reference(kd_ratio: float, temperature: float):
    batch = make_batch(seed=int(10 * temperature))
    (ref_loss, ref_ce, ref_kl), ref_grads = reference(batch, kd_ratio, temperature)
    (loss, ce, kl), grads = fused(batch, kd_ratio, temperature)
    assert ref_kl > 0.05  # the teacher really differs from the student
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(ce, ref_ce, **TOL)
    torch.testing.assert_close(kl, ref_kl, **TOL)
    assert ce.grad_fn is None and kl.grad_fn is None
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, **TOL)
    student_grad = grads[0]
    assert student_grad[0, :5].abs().max() == 0  # no label, no gradient
    assert student_grad[1].abs().amax(dim=-1).gt(0).sum() == (batch[-1][1] != IGNORE_INDEX).sum()


def test_without_biases_matches_reference_with_zero_biases():
    student, weight, _, teacher, t_weight, _, labels = make_batch(seed=3)
    zeros = torch.zeros(V)
    batch = (student, weight, zeros, teacher, t_weight, zeros, labels)
    (ref_loss, _, _), (ref_h, ref_w, _) = reference(batch, 0.6, 1.5)
    (loss, _, _), (h_grad, w_grad, b_grad) = fused(batch, 0.6, 1.5, bias=False)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(h_grad, ref_h, **TOL)
    torch.testing.assert_close(w_grad, ref_w, **TOL)
    assert b_grad is None


def test_teacher_equal_to_student_adds_no_kl():
    student, weight, bias, _, _, _, labels = make_batch(seed=4)
    batch = (student, weight, bias, student, weight, bias, labels)
    (loss, ce, kl), (h_grad, _, _) = fused(batch, 0.4, 2.0)
    _, (ce_h_grad, _, _) = fused(batch, 0.0, 2.0)
    assert abs(kl.item()) < 1e-6
    torch.testing.assert_close(loss, 0.6 * ce, **TOL)
    torch.testing.assert_close(h_grad, 0.6 * ce_h_grad, **TOL)


def test_teacher_gets_no_grad_even_when_its_tensors_require_it():
    batch = make_batch(seed=5)
    (ref_loss, _, _), ref_grads = reference(batch, 0.5, 2.0)
    student, weight, bias, teacher, t_weight, t_bias, labels = batch
    t_h, t_w, t_b = leaves(teacher, t_weight, t_bias)
    (loss, _, _), grads = fused((student, weight, bias, t_h, t_w, t_b, labels), 0.5, 2.0)
    assert t_h.grad is None and t_w.grad is None and t_b.grad is None
    torch.testing.assert_close(loss, ref_loss, **TOL)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, **TOL)
    # Only the student is asked for: a teacher that requires grad does not build a graph.
    with torch.enable_grad():
        loss = FusedLinearKDLoss(0.5, 2.0)(student, weight, t_h, t_w, labels)
    assert loss.grad_fn is None


def test_kd_ratio_zero_is_fused_and_masked_cross_entropy():
    student, weight, bias, teacher, t_weight, t_bias, labels = make_batch(seed=6)
    num = 3 * count_label_tokens(labels).item()
    h, w, b = leaves(student, weight, bias)
    kd = FusedLinearKDLoss(kd_ratio=0.0, temperature=3.0, chunk_len=7)
    kd_loss = kd(h, w, teacher, t_weight, labels, num, b, t_bias)
    kd_loss.backward()

    ce_h, ce_w, ce_b = leaves(student, weight, bias)
    ce_loss = FusedLinearCrossEntropy(chunk_len=7)(ce_h, ce_w, labels, num, lm_head_bias=ce_b)
    ce_loss.backward()
    m_h, m_w, m_b = leaves(student, weight, bias)
    masked = MaskedCrossEntropy()(m_h @ m_w.T + m_b, labels, num)
    masked.backward()
    for other, grads in ((ce_loss, (ce_h, ce_w, ce_b)), (masked, (m_h, m_w, m_b))):
        torch.testing.assert_close(kd_loss, other, **TOL)
        for mine, theirs in zip((h, w, b), grads, strict=True):
            torch.testing.assert_close(mine.grad, theirs.grad, **TOL)


def test_micro_batches_with_the_global_count_equal_one_batch():
    batch = make_batch(seed=7)
    student, weight, bias, teacher, t_weight, t_bias, labels = batch
    labels[1, 3:] = IGNORE_INDEX  # the two micro-batches hold very different numbers of labels
    (ref_loss, _, _), ref_grads = reference(batch, 0.5, 2.0)
    loss_fn = FusedLinearKDLoss(0.5, 2.0, chunk_len=4)

    def accumulate(num_label_tokens):
        h, w, b = leaves(student, weight, bias)
        loss = sum(
            loss_fn(h[i], w, teacher[i], t_weight, labels[i], num_label_tokens, b, t_bias)
            for i in range(B)
        )
        loss.backward()
        return loss.detach(), (h.grad, w.grad, b.grad)

    loss, grads = accumulate(count_label_tokens(labels))
    torch.testing.assert_close(loss, ref_loss, **TOL)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, **TOL)
    # The mean of per-micro-batch means is what the normaliser exists to avoid.
    assert not torch.allclose(accumulate(None)[0] / B, ref_loss, rtol=1e-3)


def test_num_label_tokens_divides_loss_and_grads():
    batch = make_batch(seed=8)
    count = count_label_tokens(batch[-1]).item()
    (loss, ce, kl), grads = fused(batch, 0.5, 2.0)
    (loss4, ce4, kl4), grads4 = fused(batch, 0.5, 2.0, num_label_tokens=torch.tensor(4 * count))
    for got, want in zip((loss4, ce4, kl4, *grads4), (loss, ce, kl, *grads), strict=True):
        torch.testing.assert_close(got, want / 4, **TOL)


@pytest.mark.parametrize("chunk_len", [1, 3, 1000])
def test_chunk_len_does_not_change_loss_or_grads(chunk_len: int):
    batch = make_batch(seed=9)
    (ref_loss, ref_ce, ref_kl), ref_grads = reference(batch, 0.7, 1.5)
    (loss, ce, kl), grads = fused(batch, 0.7, 1.5, chunk_len=chunk_len)
    for got, want in zip(
        (loss, ce, kl, *grads), (ref_loss, ref_ce, ref_kl, *ref_grads), strict=True
    ):
        torch.testing.assert_close(got, want, **TOL)


def test_upstream_gradient_scales_the_grads():
    batch = make_batch(seed=10)
    _, ref_grads = reference(batch, 0.5, 2.0)
    _, grads = fused(batch, 0.5, 2.0, chunk_len=6, scale=2.5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, 2.5 * want, **TOL)


def test_no_grad_evaluation_gives_the_loss_and_parts_only():
    batch = make_batch(seed=11)
    ref_parts, _ = reference(batch, 0.5, 2.0)
    with torch.no_grad():
        parts, grads = fused(batch, 0.5, 2.0, chunk_len=4)
    for got, want in zip(parts, ref_parts, strict=True):
        torch.testing.assert_close(got, want, **TOL)
        assert got.grad_fn is None
    assert grads == (None, None, None)


def test_all_ignored_batch_gives_zero_loss_and_zero_grads():
    student, weight, bias, teacher, t_weight, t_bias, _ = make_batch(seed=12)
    labels = torch.full((B, S), IGNORE_INDEX)
    h, w, b = leaves(student, weight, bias)
    loss = FusedLinearKDLoss(0.5, 2.0)(h, w, teacher, t_weight, labels, None, b, t_bias)
    loss.backward()
    assert loss.item() == 0.0
    for grad in (h.grad, w.grad, b.grad):
        assert grad is not None and grad.abs().max() == 0


def test_bf16_inputs_give_grads_in_bf16_close_to_float32():
    batch = make_batch(seed=13, dtype=torch.bfloat16)
    (ref_loss, _, _), ref_grads = reference(batch, 0.5, 2.0)  # float32 math on the bf16 values
    (loss, _, _), grads = fused(batch, 0.5, 2.0)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, **TOL)  # the loss itself is all float32
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-4)


def test_second_backward_is_an_error_not_a_wrong_grad():
    student, weight, _, teacher, t_weight, _, labels = make_batch()
    h = student.clone().requires_grad_(True)
    loss = FusedLinearKDLoss()(h, weight, teacher, t_weight, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="single backward"):
        loss.backward()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kd_ratio": -0.1}, r"kd_ratio must be in \[0, 1\], got -0.1"),
        ({"kd_ratio": 1.5}, r"kd_ratio must be in \[0, 1\], got 1.5"),
        ({"kd_ratio": math.nan}, "kd_ratio"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0, got 0.0"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"chunk_len": 0}, "chunk_len"),
    ],
)
def test_bad_constructor_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FusedLinearKDLoss(**kwargs)


def test_mismatched_tensors_are_rejected():
    student, weight, _, teacher, t_weight, _, labels = make_batch()
    loss_fn = FusedLinearKDLoss()
    with pytest.raises(ValueError, match=r"teacher_head_weight \(41, 20\).*\(40, 12\)"):
        loss_fn(student, weight, teacher, torch.randn(V + 1, HT), labels)
    with pytest.raises(ValueError, match=r"teacher_head_weight .* hidden size 20"):
        loss_fn(student, weight, teacher, torch.randn(V, H), labels)
    with pytest.raises(ValueError, match=r"student_head_weight .* hidden size 12"):
        loss_fn(student, torch.randn(V, HT), teacher, t_weight, labels)
    with pytest.raises(ValueError, match=r"teacher_hidden .* labels"):
        loss_fn(student, weight, teacher[:, :-1], t_weight, labels)
    with pytest.raises(ValueError, match=r"student_hidden .* labels"):
        loss_fn(student[:, :-1], weight, teacher, t_weight, labels)
