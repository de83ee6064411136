"""Aux-loss and aux-loss-free (bias) balancing, and the load metrics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from automodel.moe import (
    MoE,
    MoEConfig,
    TopKRouter,
    attach_aux_loss,
    expert_load,
    moe_aux_loss,
    moe_metrics,
    routing_mask,
    uncounted,
    update_moe_bias,
)


def _skewed_router(balancing: str, **kwargs) -> tuple[TopKRouter, torch.Tensor]:
    """8 experts; every token has a large component along which experts 0 and 1 score high."""
    gen = torch.Generator().manual_seed(0)
    cfg = MoEConfig(16, 8, 8, 2, balancing=balancing, **kwargs)
    router = TopKRouter(cfg)
    with torch.no_grad():
        router.weight.copy_(torch.randn(8, 16, generator=gen) * 0.3)
        router.weight[:2, 0] += 2.0
    x = torch.randn(512, 16, generator=gen)
    x[:, 0] = x[:, 0].abs() + 1.0
    return router, x


def _imbalance(counts: torch.Tensor) -> float:
    return float(counts.max() / counts.mean())


@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
def test_bias_balancing_reduces_imbalance_and_keeps_weights(score_func: str) -> None:
    router, x = _skewed_router("bias", bias_update_rate=0.005, score_func=score_func)
    router.train()
    model = nn.ModuleDict({"gate": router})
    router(x)
    before = _imbalance(router.bias_counts)
    assert before > 3.0  # experts 0 and 1 take almost every token
    for _ in range(200):
        router(x)
        update_moe_bias(model)
    assert router.bias_counts.sum() == 0  # reset by the update
    _, weights, ids = router(x)
    after = _imbalance(router.bias_counts)
    assert after < 1.25, (before, after)
    assert router.e_score_correction_bias[:2].max() < router.e_score_correction_bias[2:].min()
    # The bias changed the selection only: weights are the unbiased scores of the chosen experts.
    _, scores = router.scores(x)
    expected = scores.gather(1, ids)
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(weights, expected)


def test_bias_is_not_updated_from_eval_forwards() -> None:
    router, x = _skewed_router("bias")
    router.eval()
    router(x)
    update_moe_bias(nn.ModuleDict({"gate": router}))
    assert router.e_score_correction_bias.abs().sum() == 0


def test_aux_loss_matches_hand_computation_and_transformers() -> None:
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    router, x = _skewed_router("aux_loss", aux_loss_coeff=0.5)
    router.train()
    logits, _, ids = router(x)
    probs = torch.softmax(logits, dim=-1)
    fraction = torch.stack([(ids == e).sum() for e in range(8)]).float() / 512
    hand = 0.5 * 8 * (fraction * probs.mean(0)).sum()
    torch.testing.assert_close(router.aux_loss, hand)
    hf = load_balancing_loss_func((logits,), num_experts=8, top_k=2)
    torch.testing.assert_close(router.aux_loss, 0.5 * hf)
    # It is differentiable w.r.t. the router weight (through the probabilities).
    router.aux_loss.backward()
    assert router.weight.grad.abs().sum() > 0


def test_padding_counts_toward_neither_load_nor_aux_loss_under_routing_mask() -> None:
    """routing_mask(model, attention_mask): the aux loss equals transformers' with the same
    attention mask, and the load counts only the real tokens."""
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    router, x = _skewed_router("aux_loss", aux_loss_coeff=0.5)
    router.train()
    model = nn.ModuleDict({"gate": router})
    mask = torch.ones(4, 128, dtype=torch.long)
    mask[1, 40:] = 0
    mask[3, 100:] = 0
    with routing_mask(model, mask):
        logits, _, ids = router(x)
    assert router.token_mask is None  # cleared on exit
    hf = load_balancing_loss_func((logits,), num_experts=8, top_k=2, attention_mask=mask)
    torch.testing.assert_close(router.aux_loss, 0.5 * hf)
    real = mask.reshape(-1).bool()
    expected = torch.bincount(ids[real].reshape(-1), minlength=8).float()
    torch.testing.assert_close(expert_load(model)["moe_0"], expected)
    wrong = pytest.raises(ValueError, match="routing mask has 8 tokens, this forward 512")
    with wrong, routing_mask(model, torch.ones(2, 4)):
        router(x)
    with routing_mask(model, torch.zeros(4, 128)):  # nothing real: no load, a zero aux loss
        router(x)
    assert router.aux_loss.item() == 0.0


def test_aux_loss_sigmoid_normalises_scores() -> None:
    router, x = _skewed_router("aux_loss", aux_loss_coeff=1.0, score_func="sigmoid")
    router.train()
    logits, _, ids = router(x)
    probs = torch.sigmoid(logits)
    probs = probs / probs.sum(-1, keepdim=True)
    fraction = torch.bincount(ids.flatten(), minlength=8).float() / 512
    torch.testing.assert_close(router.aux_loss, 8 * (fraction * probs.mean(0)).sum())


def test_aux_loss_only_in_training_and_reaches_model_helpers() -> None:
    torch.manual_seed(0)
    cfg = MoEConfig(16, 8, 8, 2, balancing="aux_loss", aux_loss_coeff=0.1)
    model = nn.ModuleDict({"a": MoE(cfg), "b": MoE(cfg)})
    x = torch.randn(4, 5, 16)
    model.eval()
    model["a"](x)
    assert moe_aux_loss(model) is None
    model.train()
    model["a"](x)
    model["b"](x)
    total = moe_aux_loss(model)
    torch.testing.assert_close(total, model["a"].gate.aux_loss + model["b"].gate.aux_loss)
    metrics = moe_metrics(model)
    assert metrics["moe/aux_loss"] == pytest.approx(float(total.detach()))
    assert set(metrics) >= {"moe/moe_0/aux_loss", "moe/moe_1/imbalance", "moe/imbalance_max"}


def test_metrics_count_tokens_and_reset() -> None:
    cfg = MoEConfig(16, 8, 4, 1)
    layers = nn.ModuleDict({"layers": nn.ModuleList([MoE(cfg), MoE(cfg)])})
    with torch.no_grad():
        layers["layers"][0].gate.weight.zero_()
        layers["layers"][0].gate.weight[2, 0] = 10.0  # every token -> expert 2
    x = torch.randn(30, 16)
    x[:, 0] = 1.0
    layers["layers"][0](x)
    layers["layers"][1](x)
    load = expert_load(layers)
    assert sorted(load) == ["layer_0", "layer_1"]
    assert load["layer_0"].tolist() == [0, 0, 30, 0]
    assert load["layer_1"].sum() == 30
    metrics = moe_metrics(layers)
    assert metrics["moe/layer_0/imbalance"] == pytest.approx(4.0)
    assert metrics["moe/layer_0/dead_experts"] == 3
    assert metrics["moe/imbalance_max"] == pytest.approx(4.0)
    assert moe_metrics(layers) == {}  # reset: nothing routed since


def test_balanced_routing_gives_every_expert_the_same_load() -> None:
    """`routing="balanced"` (throughput benchmarks): token t's slot j goes to expert
    (t * k + j) mod E with weight 1/k, whatever the gate says; no balancing loss."""
    router, x = _skewed_router("aux_loss", routing="balanced")
    router.train()
    logits, weights, ids = router(x)
    k, experts = 2, 8
    assert torch.equal(ids, torch.arange(512 * k).view(512, k) % experts)
    assert torch.equal(weights, torch.full((512, k), 1.0 / k))
    assert router.aux_loss is None and logits.shape == (512, experts)
    assert torch.equal(router.load_counts, torch.full((experts,), 512 * k / experts))
    block = MoE(MoEConfig(16, 8, 8, 2, routing="balanced"))
    nn.init.normal_(block.experts.gate_up_proj)
    nn.init.normal_(block.experts.down_proj)
    block(torch.randn(1, 4, 16)).sum().backward()
    assert block.gate.weight.grad is None  # the gate is not used
    with pytest.raises(ValueError, match="routing"):
        MoEConfig(16, 8, 8, 2, routing="random")


def test_attach_aux_loss_adds_the_aux_gradient_as_a_summed_loss_would() -> None:
    """The output is unchanged; backward through it gives the gradients of loss + aux."""
    torch.manual_seed(0)
    cfg = MoEConfig(16, 8, 8, 2, balancing="aux_loss", aux_loss_coeff=0.1)
    block, x = MoE(cfg), torch.randn(3, 5, 16)
    block.train()
    out = block(x)
    (out.square().mean() + 0.25 * moe_aux_loss(block)).backward()
    expected = {name: p.grad.clone() for name, p in block.named_parameters()}
    block.zero_grad()
    out = block(x)
    carried = attach_aux_loss(out, 0.25 * moe_aux_loss(block))
    assert torch.equal(carried, out)
    carried.square().mean().backward()
    for name, p in block.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], msg=name)
    assert block.gate.weight.grad.abs().sum() > 0


def test_uncounted_forwards_leave_the_counts_as_they_were() -> None:
    router, x = _skewed_router("aux_loss", aux_loss_coeff=0.5)
    router.train()
    model = nn.ModuleDict({"gate": router})
    router(x)
    before = moe_metrics(model, reset=False)
    with uncounted(model):
        router(x[:100])
        router(torch.randn(7, 16))
    assert moe_metrics(model, reset=False) == before
    assert int(router.load_counts.sum()) == 512 * 2  # the first forward's top-2 slots
