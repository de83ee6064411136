"""Tests of automodel.core.losses: masked, chunked and fused-linear cross-entropy agree exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from automodel.core.losses import (
    IGNORE_INDEX,
    ChunkedCrossEntropy,
    FusedLinearCrossEntropy,
    MaskedCrossEntropy,
    count_label_tokens,
    shift_labels,
)

B, S, H, V = 2, 13, 16, 50  # N = 26 tokens
TOL = {"rtol": 1e-5, "atol": 1e-6}


def make_batch(seed: int = 0, dtype: torch.dtype = torch.float32, ignored: float = 0.3):
    """Hidden states, LM head weight and bias, and labels with ignored positions and a masked run."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, S, H, generator=gen).to(dtype)
    weight = (torch.randn(V, H, generator=gen) / H**0.5).to(dtype)
    bias = (torch.randn(V, generator=gen) * 0.1).to(dtype)
    labels = torch.randint(0, V, (B, S), generator=gen)
    labels[torch.rand(B, S, generator=gen) < ignored] = IGNORE_INDEX
    labels[0, :9] = IGNORE_INDEX  # a long masked run: whole chunks without labels
    return hidden, weight, bias, labels


def leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def reference(hidden, weight, bias, labels, num_label_tokens=None):
    """Masked CE on float32 logits built with autograd: loss and grads wrt hidden, weight, bias."""
    h, w, b = leaves(hidden.float(), weight.float(), bias.float())
    logits = h @ w.T + b
    loss = MaskedCrossEntropy()(logits, labels, num_label_tokens)
    loss.backward()
    return loss.detach(), h.grad, w.grad, b.grad


def test_shift_labels_moves_targets_left_and_pads():
    labels = torch.tensor([[1, 2, 3, 4], [5, -100, 7, 8]])
    assert shift_labels(labels).tolist() == [[2, 3, 4, -100], [-100, 7, 8, -100]]
    assert shift_labels(labels, ignore_index=-1).tolist()[0] == [2, 3, 4, -1]
    assert count_label_tokens(labels).item() == 7


def test_masked_matches_torch_mean_cross_entropy():
    _, _, _, labels = make_batch()
    logits = torch.randn(B, S, V, dtype=torch.float64)
    mine, ref = leaves(logits, logits)
    loss = MaskedCrossEntropy()(mine, labels)
    expected = F.cross_entropy(ref.view(-1, V), labels.view(-1), reduction="mean")
    loss.backward()
    expected.backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, **TOL)
    torch.testing.assert_close(mine.grad, ref.grad, **TOL)


def test_masked_divides_by_num_label_tokens():
    _, _, _, labels = make_batch()
    logits = torch.randn(B, S, V)
    loss_fn = MaskedCrossEntropy()
    count = count_label_tokens(labels).item()
    per_batch = loss_fn(logits, labels)
    torch.testing.assert_close(loss_fn(logits, labels, 4 * count), per_batch / 4)
    torch.testing.assert_close(loss_fn(logits, labels, torch.tensor(4 * count)), per_batch / 4)


@pytest.mark.parametrize("chunk_len", [1, 5, 8, 26, 1024])
@pytest.mark.parametrize("given", [False, True])
def test_all_three_agree(chunk_len: int, given: bool):
    hidden, weight, bias, labels = make_batch(seed=chunk_len)
    num = 3 * count_label_tokens(labels).item() if given else None
    ref_loss, ref_h, ref_w, ref_b = reference(hidden, weight, bias, labels, num)

    logits = (hidden @ weight.T + bias).requires_grad_(True)
    chunked = ChunkedCrossEntropy(chunk_len)(logits, labels, num)
    chunked.backward()
    masked_logits = logits.detach().clone().requires_grad_(True)
    MaskedCrossEntropy()(masked_logits, labels, num).backward()
    torch.testing.assert_close(chunked, ref_loss, **TOL)
    torch.testing.assert_close(logits.grad, masked_logits.grad, **TOL)

    h, w, b = leaves(hidden, weight, bias)
    fused = FusedLinearCrossEntropy(chunk_len)(h, w, labels, num, lm_head_bias=b)
    fused.backward()
    torch.testing.assert_close(fused, ref_loss, **TOL)
    torch.testing.assert_close(h.grad, ref_h, **TOL)
    torch.testing.assert_close(w.grad, ref_w, **TOL)
    torch.testing.assert_close(b.grad, ref_b, **TOL)
    assert h.grad[0, :9].abs().max() == 0  # no label, no gradient


def test_fused_accepts_flat_hidden_and_no_bias():
    hidden, weight, _, labels = make_batch()
    h, w = leaves(hidden.view(-1, H), weight)
    loss = FusedLinearCrossEntropy(chunk_len=4)(h, w, labels.view(-1))
    loss.backward()
    ref_loss, ref_h, ref_w, _ = reference(hidden, weight, torch.zeros(V), labels)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(h.grad, ref_h.view(-1, H), **TOL)
    torch.testing.assert_close(w.grad, ref_w, **TOL)


def test_grads_scale_with_the_upstream_gradient():
    hidden, weight, bias, labels = make_batch()
    _, ref_h, ref_w, _ = reference(hidden, weight, bias, labels)
    h, w = leaves(hidden, weight)
    (2.5 * FusedLinearCrossEntropy(7)(h, w, labels, lm_head_bias=bias)).backward()
    torch.testing.assert_close(h.grad, 2.5 * ref_h, **TOL)
    torch.testing.assert_close(w.grad, 2.5 * ref_w, **TOL)
    logits = (hidden @ weight.T + bias).requires_grad_(True)
    (2.5 * ChunkedCrossEntropy(7)(logits, labels)).backward()
    torch.testing.assert_close(logits.grad @ weight, 2.5 * ref_h, **TOL)


def test_fused_frozen_weight_gets_no_grad():
    hidden, weight, _, labels = make_batch()
    h = hidden.clone().requires_grad_(True)
    FusedLinearCrossEntropy(8)(h, weight, labels).backward()
    _, ref_h, _, _ = reference(hidden, weight, torch.zeros(V), labels)
    assert weight.grad is None
    torch.testing.assert_close(h.grad, ref_h, **TOL)


def test_fused_without_grad_gives_the_same_loss():
    hidden, weight, bias, labels = make_batch()
    ref_loss = reference(hidden, weight, bias, labels)[0]
    h, w, b = leaves(hidden, weight, bias)
    with torch.no_grad():
        loss = FusedLinearCrossEntropy(8)(h, w, labels, lm_head_bias=b)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    assert loss.grad_fn is None


def test_bf16_inputs_match_float32_reference():
    hidden, weight, bias, labels = make_batch(dtype=torch.bfloat16)
    ref_loss, ref_h, ref_w, ref_b = reference(hidden, weight, bias, labels)
    bf16 = {"rtol": 2e-2, "atol": 2e-3}

    logits = (hidden.float() @ weight.float().T + bias.float()).bfloat16().requires_grad_(True)
    logits_grads = []
    for loss_fn in (MaskedCrossEntropy(), ChunkedCrossEntropy(6)):
        logits.grad = None
        loss = loss_fn(logits, labels)
        loss.backward()
        assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
        torch.testing.assert_close(loss, ref_loss, **bf16)
        logits_grads.append(logits.grad)
    torch.testing.assert_close(*logits_grads)  # both round the same float32 grads to bf16

    h, w, b = leaves(hidden, weight, bias)
    loss = FusedLinearCrossEntropy(6)(h, w, labels, lm_head_bias=b)
    loss.backward()
    assert loss.dtype == torch.float32
    assert h.grad.dtype == w.grad.dtype == b.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss, **bf16)
    torch.testing.assert_close(h.grad.float(), ref_h, **bf16)
    torch.testing.assert_close(w.grad.float(), ref_w, **bf16)
    torch.testing.assert_close(b.grad.float(), ref_b, **bf16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_matches_masked_on_cuda():
    """On CUDA: the fused loss and its grads against the float32 reference (float32 and bf16),
    and against the masked loss on the full logits at a size with many chunks."""
    bf16 = {"rtol": 2e-2, "atol": 2e-3}
    for dtype, tol in ((torch.float32, TOL), (torch.bfloat16, bf16)):
        hidden, weight, bias, labels = make_batch(dtype=dtype)
        ref_loss, *ref_grads = reference(hidden, weight, bias, labels)
        h, w, b = leaves(*(t.cuda() for t in (hidden, weight, bias)))
        loss = FusedLinearCrossEntropy(6)(h, w, labels.cuda(), lm_head_bias=b)
        loss.backward()
        assert loss.dtype == torch.float32 and h.grad.dtype == dtype
        torch.testing.assert_close(loss.cpu(), ref_loss, **tol)
        for got, ref in zip((h.grad, w.grad, b.grad), ref_grads, strict=True):
            torch.testing.assert_close(got.float().cpu(), ref, **tol)

    gen = torch.Generator("cuda").manual_seed(0)
    hidden = torch.randn(1024, 256, device="cuda", generator=gen)
    weight = torch.randn(32000, 256, device="cuda", generator=gen) / 16
    labels = torch.randint(0, 32000, (1024,), device="cuda", generator=gen)
    labels[::3] = IGNORE_INDEX
    h, w = leaves(hidden, weight)
    fused = FusedLinearCrossEntropy(256)(h, w, labels)
    fused.backward()
    mh, mw = leaves(hidden, weight)
    masked = MaskedCrossEntropy()(mh @ mw.T, labels)
    masked.backward()
    close = {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(fused, masked, **close)
    torch.testing.assert_close(h.grad, mh.grad, **close)
    torch.testing.assert_close(w.grad, mw.grad, **close)


@pytest.mark.parametrize("num_label_tokens", [None, 0, 10])
def test_all_ignored_batch_gives_zero_and_zero_grads(num_label_tokens):
    hidden, weight, bias, _ = make_batch()
    labels = torch.full((B, S), IGNORE_INDEX)
    logits = (hidden @ weight.T).requires_grad_(True)
    for loss_fn in (MaskedCrossEntropy(), ChunkedCrossEntropy(4)):
        logits.grad = None
        loss = loss_fn(logits, labels, num_label_tokens)
        loss.backward()
        assert loss.item() == 0.0
        assert logits.grad.abs().max() == 0
    h, w, b = leaves(hidden, weight, bias)
    loss = FusedLinearCrossEntropy(4)(h, w, labels, num_label_tokens, lm_head_bias=b)
    loss.backward()
    assert loss.item() == 0.0
    for grad in (h.grad, w.grad, b.grad):
        assert grad is not None and grad.abs().max() == 0


def test_gradient_accumulation_equals_one_big_batch():
    hidden, weight, bias, labels = make_batch()
    labels[1, :2] = IGNORE_INDEX
    labels[1, 4:] = IGNORE_INDEX  # the micro-batches hold very different numbers of labels
    ref_loss, ref_h, ref_w, ref_b = reference(hidden, weight, bias, labels)
    total = count_label_tokens(labels)

    def accumulate(loss_fn, num_label_tokens):
        h, w, b = leaves(hidden, weight, bias)
        loss = sum(
            loss_fn(h[i : i + 1], w, labels[i : i + 1], num_label_tokens, lm_head_bias=b)
            for i in range(B)
        )
        loss.backward()
        return loss.detach(), h.grad, w.grad, b.grad

    def logits_loss(loss_fn):
        return lambda h, w, lab, num, lm_head_bias: loss_fn(h @ w.T + lm_head_bias, lab, num)

    for loss_fn in (
        FusedLinearCrossEntropy(5),
        logits_loss(ChunkedCrossEntropy(5)),
        logits_loss(MaskedCrossEntropy()),
    ):
        for got, want in zip(
            accumulate(loss_fn, total), (ref_loss, ref_h, ref_w, ref_b), strict=True
        ):
            torch.testing.assert_close(got, want, **TOL)
        # The per-micro-batch mean is what the normaliser exists to avoid.
        naive = accumulate(loss_fn, None)[0] / B
        assert not torch.allclose(naive, ref_loss, rtol=1e-3)


def test_fused_on_a_tiny_llama_matches_masked_on_its_logits(tiny_llama_config):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tiny_llama_config(vocab_size=128)
    model = transformers.LlamaForCausalLM(cfg)
    input_ids = torch.randint(0, 128, (2, 12))
    labels = input_ids.clone()
    labels[:, :4] = IGNORE_INDEX  # a prompt
    labels = shift_labels(labels)

    MaskedCrossEntropy()(model(input_ids).logits, labels).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    hidden = model.model(input_ids).last_hidden_state
    FusedLinearCrossEntropy(chunk_len=5)(hidden, model.lm_head.weight, labels).backward()

    assert expected.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="chunk_len"):
        ChunkedCrossEntropy(chunk_len=0)
    with pytest.raises(ValueError, match="labels"):
        MaskedCrossEntropy()(torch.randn(2, 3, V), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="lm_head_weight"):
        FusedLinearCrossEntropy()(torch.randn(2, 3, H), torch.randn(V, H + 1), torch.zeros(2, 3))


def test_fused_second_backward_is_an_error_not_a_wrong_grad():
    hidden, weight, _, labels = make_batch()
    h, w = leaves(hidden, weight)
    loss = FusedLinearCrossEntropy(8)(h, w, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="single backward"):
        loss.backward()
