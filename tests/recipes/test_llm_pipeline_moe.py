"""MoE blocks in pipeline stages (`moe:` with `distributed.pp_size`), with expert parallelism
inside each stage: the balancing loss of every stage, padding kept out of the routing and the
load of every layer, as one process trains and counts them."""

from __future__ import annotations

import pytest
import torch
from _shared import MOE

from automodel.core.config import ConfigError, load_config
from automodel.core.losses import MaskedCrossEntropy, shift_labels
from automodel.distributed import DecoderStage
from automodel.distributed._strategy import apply_activation_checkpointing
from automodel.moe import expert_load, moe_metrics
from automodel.recipes import MoeStep, Parallel, build_model, read_distributed, read_moe
from automodel.recipes._moe import apply_moe
from automodel.recipes.llm._pipeline import check_pipeline

STEPS, MIDDLE = 4, 2
# One sample per micro-batch: the balancing loss (of each micro-batch's tokens) then sees the
# same tokens whichever rank runs a sample, so that dp 2 can match one process with it on.
ONE_ROW = "--step_scheduler.local_batch_size=1"
# Adam's first steps move a weight by about lr whatever the size of its gradient: a gradient
# near 0 whose float rounding differs between layouts (other summation orders) moved weights
# ~2e-4 apart. With eps 1e-6 such gradients move their weight by ~lr × grad / eps instead.
SMALL_GRADS_STAY_SMALL = "--optimizer.eps=1e-6"
PP_EP = ["--+distributed.pp_size=2", "--+distributed.ep_size=2"]


@pytest.fixture(scope="module")
def overrides(short_run, small_data):
    """`overrides(run_dir, *extra)`: 4 steps of global batch 8, one sample per micro-batch."""
    return lambda run_dir, *extra: short_run(
        run_dir, small_data, STEPS, MIDDLE, ONE_ROW, SMALL_GRADS_STAY_SMALL, *extra
    )


@pytest.mark.slow
def test_stages_with_expert_parallelism_train_as_one_process(
    overrides, run_recipe, run_cli, jsonl_rows, assert_same_training, tmp_path, monkeypatch_module
):
    """pp 2 × dp 2 with ep 2 inside each stage (4 processes), aux-loss balancing: losses, grad
    norms, validation, the final weights (each stage's experts gathered from its two ranks)
    and the load and aux-loss metrics of both layers (the second on the other stage's ranks)
    match one process running every micro-batch."""
    one, piped = tmp_path / "one", tmp_path / "piped"
    recipe = run_recipe(MOE, overrides(one))
    assert recipe.pipeline is None and recipe.step_scheduler.grad_acc_steps == 8
    stderr = run_cli(MOE, overrides(piped, *PP_EP), nproc=4)
    assert "expert parallel 2, pipeline parallel 2" in stderr
    assert "pipeline: stage 0 of 2 holds layers 0-0 (1f1b schedule, 4 micro-batches)" in stderr
    assert_same_training(piped, one, range(1, STEPS + 1), MIDDLE)  # weights within 2.2e-6
    rows, reference = jsonl_rows(piped / "training.jsonl"), jsonl_rows(one / "training.jsonl")
    for row, expected in zip(rows, reference, strict=True):
        moe = {k: v for k, v in expected.items() if k.startswith("moe/")}
        assert {"moe/layer_1/imbalance", "moe/layer_1/aux_loss", "moe/aux_loss"} <= moe.keys()
        assert {k: v for k, v in row.items() if k.startswith("moe/")} == pytest.approx(moe)


def _batch(ids: torch.Tensor, real: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention mask, shifted labels) of `ids` whose rows hold `real` tokens each."""
    mask = torch.zeros_like(ids)
    for row, n in enumerate(real):
        mask[row, :n] = 1
    return mask, shift_labels(ids.masked_fill(mask == 0, -100))


def test_stages_count_and_balance_each_micro_batch_as_the_whole_model(monkeypatch_module):
    """Two stages of the tiny MoE model in this process, run as a schedule runs them: a shape
    probe on made-up activations, then both micro-batches forward before either backward, with
    activation checkpointing recomputing the routers in backward. Each micro-batch's padding
    (other in each) stays out of the load and the aux loss, and the first stage's aux loss,
    carried by its output, gives the layer gradients of the whole model's loss + aux loss."""
    cfg = load_config(MOE)
    section = read_moe(cfg, 1)
    model = build_model(cfg)
    apply_moe(model, section, cfg)
    apply_activation_checkpointing(model.model.layers)
    parallel = Parallel(torch.device("cpu"), 1, 0, 1, None, None, None)
    ids = torch.randint(4, 60, (2, 2, 12), generator=torch.Generator().manual_seed(0))
    masks, labels = zip(*(_batch(ids[0], [12, 5]), _batch(ids[1], [9, 12])), strict=True)
    tokens = sum(int((label != -100).sum()) for label in labels)
    loss_fn = MaskedCrossEntropy()
    layers = dict(model.model.layers.named_parameters())

    whole = MoeStep(model, section, parallel)  # the one-process recipe's way
    for i in range(2):
        with whole.real_tokens_only({"attention_mask": masks[i]}):
            logits = model(input_ids=ids[i], attention_mask=masks[i], use_cache=False).logits
            (loss_fn(logits, labels[i], tokens) + whole.aux_loss(2)).backward()
    expected = {name: p.grad.clone() for name, p in layers.items()}
    load, metrics = expert_load(model), moe_metrics(model, reset=True)
    model.zero_grad()

    stages = [DecoderStage(model.model, model.lm_head, [s], s, 2, None) for s in (0, 1)]
    piped = MoeStep(model, section, parallel)
    piped.use_stages(stages, model)
    with piped.pipeline_run(masks, 2, loss_scale=1):
        made_up = torch.randn(2, 12, 64, requires_grad=True)  # a probe: not the step's mask
        probe = stages[1](made_up, token_mask=masks[0].clone())
        torch.autograd.grad(probe.sum(), made_up)
        sent, logits = [], []
        for i in range(2):
            hidden = stages[0](ids[i], token_mask=masks[i])
            received = hidden.detach().requires_grad_()
            sent.append((hidden, received))
            logits.append(stages[1](received, token_mask=masks[i]))
        for i in range(2):
            loss_fn(logits[i], labels[i], tokens).backward()
            hidden, received = sent[i]
            hidden.backward(received.grad)
    for name, p in layers.items():
        torch.testing.assert_close(p.grad, expected[name], msg=name)
    assert {k: v.tolist() for k, v in expert_load(model).items()} == {
        k: v.tolist() for k, v in load.items()
    }
    assert moe_metrics(model) == pytest.approx(metrics)
    assert all(router.token_mask is None for router in _routers(model))


def _routers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__ == "TopKRouter"]


def test_moe_and_expert_parallelism_are_accepted_with_pipeline_stages(monkeypatch_module):
    cfg = load_config(MOE, PP_EP)
    section, dp_size = read_distributed(cfg, world_size=8)
    assert (section.pp_size, section.ep_size, dp_size) == (2, 2, 4)
    check_pipeline(cfg, section)  # no config problem
    with pytest.raises(ConfigError, match="expert parallelism with tp_size > 1 is not supported"):
        read_distributed(load_config(MOE, [*PP_EP, "--+distributed.tp_size=2"]), world_size=8)
