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
            h = _project(experts, "gate_up_proj" if cfg.gated else "up_proj", e, x[t])
            if cfg.gated and cfg.activation == "swiglu_oai":  # gpt-oss's own formula
                gate, up = h[::2], h[1::2]
                gate = gate.clamp(max=cfg.activation_limit)
                up = up.clamp(-cfg.activation_limit, cfg.activation_limit)
                h = (up + 1) * gate * torch.sigmoid(gate * cfg.activation_alpha)
            elif cfg.gated:
                gate, up = h.chunk(2)
                act = {"swiglu": F.silu, "geglu": F.gelu}[cfg.activation]
                h = act(gate) * up
            else:
                h = F.gelu(h) if cfg.activation == "gelu" else F.relu(h) ** 2
            out[t] += weights[t, j] * _project(experts, "down_proj", e, h)
    return out


def _project(experts: GroupedExperts, name: str, e: int, v: torch.Tensor) -> torch.Tensor:
    """Expert ``e``'s projection ``name`` of the vector ``v``, with its bias if it has one."""
    w = getattr(experts, name)[e]
    y = v @ w if experts.config.transposed_experts else w @ v
    bias = experts._parameters.get(f"{name}_bias")
    return y if bias is None else y + bias[e]


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


# gpt-oss's experts: [E, in, out] weights with biases, gate/up interleaved, clamped swiglu_oai
GPT_OSS_LAYOUT = {
    "activation": "swiglu_oai",
    "activation_limit": 0.8,
    "gate_up_interleaved": True,
    "expert_bias": True,
    "transposed_experts": True,
}


@pytest.mark.parametrize(
    "backend",
    [
        "loop",
        pytest.param(
            "grouped_mm",
            marks=pytest.mark.skipif(not _grouped_mm_works_on_cpu(), reason="no CPU kernel"),
        ),
    ],
)
def test_biased_transposed_experts_match_reference_forward_and_backward(backend: str) -> None:
    """Each expert row gets its own expert's biases, and the routing weight scales the output
    after down_proj's bias (the bias is not linear in the weight)."""
    torch.manual_seed(0)
    experts = GroupedExperts(MoEConfig(24, 16, 6, 2, backend=backend, **GPT_OSS_LAYOUT))
    assert experts.gate_up_proj.shape == (6, 24, 32) and experts.down_proj.shape == (6, 16, 24)
    assert experts.gate_up_proj_bias.shape == (6, 32) and experts.down_proj_bias.shape == (6, 24)
    assert experts.is_transposed  # as transformers' GptOssExperts says (LoRA reads it)
    x, ids, weights = _inputs(seed=2)
    ours = _run(experts, x, ids, weights)
    xr, wr = x.clone().requires_grad_(), weights.clone().requires_grad_()
    experts.zero_grad()
    y = _reference(experts, xr, ids, wr)
    y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y))
    ref = (y, xr.grad, wr.grad, [p.grad.clone() for p in experts.parameters()])
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b)
    assert experts.down_proj_bias.grad[3].abs().sum() == 0  # expert 3 got no token


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


@pytest.mark.parametrize("layout", [{}, GPT_OSS_LAYOUT], ids=["plain", "gpt_oss"])
def test_dispatcher_hook_gives_the_same_result(layout: dict) -> None:
    torch.manual_seed(0)
    experts = GroupedExperts(MoEConfig(24, 16, 6, 2, **layout))
    x, ids, weights = _inputs()
    expected = _run(experts, x, ids, weights)
    experts.dispatcher = _SingleRankDispatcher(6)
    got = _run(experts, x, ids, weights)
    assert experts.dispatcher.calls == 1
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


class _LocalExpertsDispatcher:
    """One of two simulated expert-parallel ranks, in one process: it computes the rows of its
    experts ``local`` only (numbered from 0 here) and adds them, weighted, into the tokens."""

    def __init__(self, local: range) -> None:
        self.local_experts = local

    def dispatch(self, x, topk_ids, topk_weights):
        local_ids = topk_ids - self.local_experts.start
        mine = (local_ids >= 0) & (local_ids < len(self.local_experts))
        token, slot = torch.nonzero(mine, as_tuple=True)
        local_ids = local_ids[token, slot]
        order = torch.argsort(local_ids, stable=True)
        counts = torch.bincount(local_ids, minlength=len(self.local_experts))
        rows_weight = topk_weights[token, slot][order]
        return x[token[order]], counts, (token[order], rows_weight, x.shape[0])

    def combine(self, y, handle):
        token, rows_weight, tokens = handle
        return y.new_zeros(tokens, y.shape[1]).index_add(0, token, y * rows_weight[:, None])


def test_biased_experts_split_over_two_ranks_add_up_to_all_experts() -> None:
    """Expert parallelism's contract with biases: each rank holds its experts' weights and
    biases only (as shard_experts slices them) and the ranks' outputs sum to the whole layer."""
    torch.manual_seed(0)
    whole = GroupedExperts(MoEConfig(24, 16, 6, 2, **GPT_OSS_LAYOUT))
    x, ids, weights = _inputs()
    expected = whole(x, ids, weights)
    total = torch.zeros_like(expected)
    for local in (range(0, 3), range(3, 6)):
        rank = GroupedExperts(MoEConfig(24, 16, 6, 2, **GPT_OSS_LAYOUT))
        for name, param in whole.named_parameters():
            setattr(rank, name, torch.nn.Parameter(param.detach()[local.start : local.stop]))
        rank.dispatcher = _LocalExpertsDispatcher(local)
        total += rank(x, ids, weights)
    torch.testing.assert_close(total, expected)


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
