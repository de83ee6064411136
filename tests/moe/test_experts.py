"""Grouped experts: the grouped_mm and loop backends agree with a per-token reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from automodel.moe import GroupedExperts, MoE, MoEConfig


def _grouped_mm_works_on_cpu() -> bool:
    try:
        x, w = torch.randn(4, 16), torch.randn(2, 16, 16)
        torch._grouped_mm(x, w, offs=torch.tensor([2, 4], dtype=torch.int32))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def _reference(experts: GroupedExperts, x, ids, weights) -> torch.Tensor:
    """Per token, per chosen expert, the plain MLP (no sorting, no grouping)."""
    cfg = experts.config
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = ids[t, j]
            h = experts.in_proj[e] @ x[t]
            if cfg.gated:
                gate, up = h.chunk(2)
                act = {"swiglu": F.silu, "geglu": F.gelu}[cfg.activation]
                h = act(gate) * up
            else:
                h = F.gelu(h) if cfg.activation == "gelu" else F.relu(h) ** 2
            out[t] += weights[t, j] * (experts.down_proj[e] @ h)
    return out


def _inputs(num_experts: int = 6, tokens: int = 20, k: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, 24, generator=gen)
    # Expert 3 never chosen: an empty group must be handled (and get a zero weight grad).
    scores = torch.rand(tokens, num_experts, generator=gen)
    scores[:, 3] = -1
    ids = scores.topk(k, dim=-1).indices
    weights = torch.rand(tokens, k, generator=gen)
    return x, ids, weights


@pytest.mark.parametrize("activation", ["swiglu", "geglu", "gelu", "relu2"])
def test_loop_backend_matches_per_token_reference(activation: str) -> None:
    torch.manual_seed(0)
    cfg = MoEConfig(24, 10, 6, 2, activation=activation, backend="loop")
    experts = GroupedExperts(cfg)
    x, ids, weights = _inputs()
    torch.testing.assert_close(experts(x, ids, weights), _reference(experts, x, ids, weights))


def _run(experts: GroupedExperts, x, ids, weights):
    x = x.clone().requires_grad_()
    weights = weights.clone().requires_grad_()
    experts.zero_grad()
    y = experts(x, ids, weights)
    y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y))
    return y, x.grad, weights.grad, [p.grad.clone() for p in experts.parameters()]


@pytest.mark.skipif(not _grouped_mm_works_on_cpu(), reason="torch._grouped_mm has no CPU kernel")
def test_grouped_mm_backend_equals_loop_backend() -> None:
    torch.manual_seed(0)
    loop = GroupedExperts(MoEConfig(24, 16, 6, 2, backend="loop"))
    grouped = GroupedExperts(MoEConfig(24, 16, 6, 2, backend="grouped_mm"))
    grouped.load_state_dict(loop.state_dict())
    x, ids, weights = _inputs()
    for a, b in zip(_run(loop, x, ids, weights), _run(grouped, x, ids, weights), strict=True):
        torch.testing.assert_close(a, b)
    assert loop.gate_up_proj.grad[3].abs().sum() == 0  # expert 3 got no token


def test_loop_backend_gradients_match_reference() -> None:
    torch.manual_seed(0)
    experts = GroupedExperts(MoEConfig(24, 16, 6, 2, backend="loop"))
    x, ids, weights = _inputs(seed=1)
    ours = _run(experts, x, ids, weights)
    xr = x.clone().requires_grad_()
    wr = weights.clone().requires_grad_()
    experts.zero_grad()
    y = _reference(experts, xr, ids, wr)
    y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y))
    ref = (y, xr.grad, wr.grad, [p.grad.clone() for p in experts.parameters()])
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b)


def test_bfloat16_forward_close_to_float32() -> None:
    torch.manual_seed(0)
    experts = GroupedExperts(MoEConfig(24, 16, 6, 2))
    x, ids, weights = _inputs()
    expected = experts(x, ids, weights)
    out = experts.to(torch.bfloat16)(x.bfloat16(), ids, weights)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=5e-2, atol=5e-2)


class _SingleRankDispatcher:
    """The dispatcher protocol on one rank: sort rows by expert, weighted sum on combine."""

    def __init__(self, num_experts: int) -> None:
        self.num_experts = num_experts
        self.calls = 0

    def dispatch(self, x, topk_ids, topk_weights):
        self.calls += 1
        flat = topk_ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts)
        return x[order // topk_ids.shape[1]], counts, (order, topk_ids.shape, topk_weights)

    def combine(self, y, handle):
        order, shape, topk_weights = handle
        out = torch.empty_like(y)
        out[order] = y
        return (out.view(*shape, -1) * topk_weights.unsqueeze(-1)).sum(1)


def test_dispatcher_hook_gives_the_same_result() -> None:
    torch.manual_seed(0)
    experts = GroupedExperts(MoEConfig(24, 16, 6, 2))
    x, ids, weights = _inputs()
    expected = _run(experts, x, ids, weights)
    experts.dispatcher = _SingleRankDispatcher(6)
    got = _run(experts, x, ids, weights)
    assert experts.dispatcher.calls == 1
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["auto", "loop"])
def test_layer_backward_from_a_plain_sum(backend: str) -> None:
    """Broadcast (stride-0) output gradients must reach the expert matmuls materialised."""
    torch.manual_seed(0)
    layer = MoE(MoEConfig(24, 16, 6, 2, backend=backend, n_shared_experts=1))
    x = torch.randn(2, 7, 24, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.abs().sum() > 0 and layer.experts.gate_up_proj.grad.abs().sum() > 0


def test_both_combine_paths_agree() -> None:
    from automodel.moe._experts import combine_rows

    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(30, generator=gen)
    y = torch.randn(30, 5, generator=gen, requires_grad=True)
    a = combine_rows(y, order, 3, scatter=True)
    b = combine_rows(y, order, 3, scatter=False)
    expected = torch.zeros(10, 5).index_add(0, order // 3, y.detach())
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(b, expected)
    (ga,) = torch.autograd.grad(a.sum() * 2, y)
    (gb,) = torch.autograd.grad(b.sum() * 2, y)
    torch.testing.assert_close(ga, gb)
