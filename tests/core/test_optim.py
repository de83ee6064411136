"""Tests of automodel.core.optim: weight-decay param groups, optimizer building, LR schedules."""

from __future__ import annotations

import io
import itertools
import math
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from automodel.core.config import ConfigError, ConfigNode, instantiate, load_config
from automodel.core.optim import (
    STYLES,
    WarmupDecayLR,
    build_lr_scheduler,
    build_optimizer,
    lr_at,
    param_groups,
)


class RMSNorm(nn.Module):
    """A custom norm whose weight is 2-D, so only the class name marks it as a norm."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 11, dim: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.ln = nn.LayerNorm(dim)
        self.norm = RMSNorm(dim)
        self.frozen = nn.Linear(dim, dim)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        return self.head(self.norm(self.ln(self.proj(x) + self.frozen(x))))


def _names(model: nn.Module, params: list[nn.Parameter]) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


# -- param groups --------------------------------------------------------------------------
def test_param_groups_exclude_biases_norms_and_frozen():
    model = TinyLM()
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert _names(model, decay["params"]) == {"embed.weight", "proj.weight", "head.weight"}
    assert _names(model, no_decay["params"]) == {
        "proj.bias",
        "ln.weight",
        "ln.bias",
        "norm.weight",
    }


def test_param_groups_can_exclude_embeddings():
    model = TinyLM()
    decay, no_decay = param_groups(model, weight_decay=0.1, decay_embeddings=False)
    assert "embed.weight" not in _names(model, decay["params"])
    assert "embed.weight" in _names(model, no_decay["params"])


def test_param_groups_tied_weights_once_and_empty_groups_dropped():
    model = TinyLM()
    model.head.weight = model.embed.weight
    groups = param_groups(model, weight_decay=0.01)
    all_params = [p for g in groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params})
    only_bias = nn.Linear(3, 3)
    only_bias.weight.requires_grad_(False)
    (group,) = param_groups(only_bias, weight_decay=0.1)
    assert group["weight_decay"] == 0.0 and group["params"] == [only_bias.bias]
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(model, weight_decay=-1.0)


def test_weight_decay_applies_only_to_the_decay_group():
    model = TinyLM()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(param_groups(model, weight_decay=0.5), lr=0.1)
    opt.step()  # no gradients: AdamW skips parameters without grad entirely
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()  # zero gradients: only decoupled weight decay changes anything
    after = dict(model.named_parameters())
    assert torch.allclose(after["proj.weight"], before["proj.weight"] * (1 - 0.1 * 0.5))
    assert torch.equal(after["proj.bias"], before["proj.bias"])
    assert torch.equal(after["norm.weight"], before["norm.weight"])
    assert torch.equal(after["frozen.weight"], before["frozen.weight"])


# -- build_optimizer -----------------------------------------------------------------------
def test_build_optimizer_from_yaml_config(tmp_path: Path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        textwrap.dedent(
            """
            optimizer:
              _target_: torch.optim.AdamW
              lr: 1.0e-4
              weight_decay: 0.01
              betas: [0.9, 0.95]
            """
        )
    )
    cfg = load_config(path)
    model = TinyLM()
    opt = build_optimizer(model, cfg.optimizer)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    assert all(g["lr"] == 1e-4 and tuple(g["betas"]) == (0.9, 0.95) for g in opt.param_groups)


def test_build_optimizer_any_torch_class_and_default_weight_decay():
    model = TinyLM()
    opt = build_optimizer(model, ConfigNode({"_target_": "torch.optim.SGD", "lr": 0.5}))
    assert isinstance(opt, torch.optim.SGD)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.0]
    opt = build_optimizer(model, {"_target_": "torch.optim.Adam", "lr": 0.1, "weight_decay": 0.2})
    assert isinstance(opt, torch.optim.Adam)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]


def test_build_optimizer_bad_argument_is_a_config_error():
    node = ConfigNode({"_target_": "torch.optim.AdamW", "lr": 1e-3, "betaz": [0.9, 0.9]})
    with pytest.raises(ConfigError, match="betaz"):
        build_optimizer(TinyLM(), node)


# -- lr_at: the pure schedule --------------------------------------------------------------
BASE, MIN, TOTAL, WARMUP = 1.0, 0.1, 110, 10


def _lr(step: int, style: str, **kw) -> float:
    return lr_at(
        step, base_lr=BASE, total_steps=TOTAL, warmup_steps=WARMUP, style=style, min_lr=MIN, **kw
    )


@pytest.mark.parametrize("style", STYLES)
def test_warmup_is_linear_from_a_nonzero_start(style: str):
    assert _lr(0, style) == pytest.approx(BASE / (WARMUP + 1))
    assert _lr(4, style) == pytest.approx(BASE * 5 / (WARMUP + 1))
    assert _lr(WARMUP - 1, style) == pytest.approx(BASE * WARMUP / (WARMUP + 1))
    assert _lr(WARMUP, style) == pytest.approx(BASE)


@pytest.mark.parametrize(
    ("style", "mid", "quarter"),
    [
        ("cosine", (BASE + MIN) / 2, MIN + (BASE - MIN) * 0.5 * (1 + math.cos(math.pi / 4))),
        ("linear", (BASE + MIN) / 2, BASE - (BASE - MIN) / 4),
        ("constant", BASE, BASE),
        ("wsd", BASE, BASE),
    ],
)
def test_decay_values(style: str, mid: float, quarter: float):
    # the decay runs over steps 10..110: a quarter of it is step 35, half is step 60
    assert _lr(35, style) == pytest.approx(quarter)
    assert _lr(60, style) == pytest.approx(mid)
    end = BASE if style == "constant" else MIN
    assert _lr(TOTAL, style) == pytest.approx(end)
    assert _lr(TOTAL + 50, style) == pytest.approx(end)
    assert _lr(TOTAL - 1, style) > end or style == "constant"


def test_wsd_is_stable_then_decays_linearly_over_the_last_fraction():
    # decay_fraction 0.2 of 110 steps -> 22 decay steps, starting at step 88
    values = [_lr(s, "wsd", decay_fraction=0.2) for s in range(TOTAL + 1)]
    assert all(v == BASE for v in values[WARMUP:89])
    assert values[99] == pytest.approx(BASE - (BASE - MIN) * 11 / 22)
    assert values[TOTAL] == pytest.approx(MIN)
    assert all(a > b for a, b in itertools.pairwise(values[88:]))
    # default: the last 10% (11 steps)
    assert _lr(98, "wsd") == BASE and _lr(100, "wsd") < BASE


def test_no_warmup_starts_at_base_lr():
    assert lr_at(0, base_lr=2.0, total_steps=10, style="cosine") == 2.0
    assert lr_at(10, base_lr=2.0, total_steps=10, style="cosine") == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"style": "exponential"}, "style must be one of cosine, linear, constant, wsd"),
        ({"total_steps": 0}, "total_steps must be an integer >= 1"),
        ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
        ({"warmup_steps": 200}, r"warmup_steps \(200\) must not exceed total_steps \(100\)"),
        ({"min_lr": -1.0}, "min_lr must be >= 0"),
        ({"min_lr": 5.0}, r"min_lr \(5.0\) must not exceed"),
        ({"decay_fraction": 0.5}, "decay_fraction only applies to style 'wsd'"),
        ({"style": "wsd", "decay_fraction": 1.5}, r"decay_fraction must be in \[0, 1\]"),
        ({"style": "wsd", "decay_fraction": 0.95, "warmup_steps": 10}, "overlaps the warmup"),
        ({"step": -3}, "step must be an integer >= 0"),
    ],
)
def test_bad_schedule_arguments(kwargs: dict, message: str):
    args = {"step": 0, "base_lr": 1.0, "total_steps": 100, **kwargs}
    step = args.pop("step")
    with pytest.raises(ValueError, match=message):
        lr_at(step, **args)


# -- the scheduler driving a real optimizer ------------------------------------------------
def _train(style: str, steps: int, **kw) -> tuple[list[float], nn.Module, WarmupDecayLR]:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=BASE)
    sched = build_lr_scheduler(
        opt, total_steps=TOTAL, warmup_steps=WARMUP, style=style, min_lr=MIN, **kw
    )
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        model(torch.ones(1, 4)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return seen, model, sched


@pytest.mark.parametrize("style", STYLES)
def test_scheduler_follows_lr_at(style: str):
    seen, _, sched = _train(style, TOTAL + 3)
    assert seen == pytest.approx([_lr(s, style) for s in range(TOTAL + 3)])
    assert sched.get_last_lr() == pytest.approx([_lr(TOTAL + 3, style)])


def test_scheduler_per_group_base_lrs_and_min_lr():
    model = TinyLM()
    groups = param_groups(model, weight_decay=0.1)
    groups[1]["lr"] = 0.5
    opt = torch.optim.AdamW(groups, lr=1.0)
    sched = build_lr_scheduler(opt, total_steps=4, style="linear", min_lr=0.1)
    lrs = []
    for _ in range(5):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[0] == [1.0, 0.5]
    assert lrs[2] == pytest.approx([0.55, 0.3])
    assert lrs[4] == pytest.approx([0.1, 0.1])


def test_scheduler_resume_reproduces_the_lr_sequence():
    full, _, _ = _train("cosine", 60)
    _, _, sched = _train("cosine", 25)
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    # a fresh optimizer whose lr was not restored: the scheduler must set it itself
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=BASE)
    resumed = build_lr_scheduler(
        opt, total_steps=TOTAL, warmup_steps=WARMUP, style="cosine", min_lr=MIN
    )
    resumed.load_state_dict(state)
    rest = []
    for _ in range(35):
        rest.append(opt.param_groups[0]["lr"])
        opt.step()
        resumed.step()
    assert rest == full[25:]
    assert resumed.state_dict()["last_epoch"] == 60


def test_scheduler_rejects_min_lr_above_optimizer_lr():
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1e-5)
    with pytest.raises(ValueError, match="min_lr"):
        build_lr_scheduler(opt, total_steps=10, min_lr=1e-4)
    with pytest.raises(ValueError, match="style must be one of"):
        build_lr_scheduler(opt, total_steps=10, style="cos")


def test_scheduler_from_a_config_section():
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    node = ConfigNode(
        {
            "_target_": "automodel.core.optim.build_lr_scheduler",
            "warmup_steps": 2,
            "style": "wsd",
            "decay_fraction": 0.5,
            "min_lr": 0.0,
        }
    )
    sched = instantiate(node, optimizer=opt, total_steps=8)
    assert isinstance(sched, WarmupDecayLR)
    assert sched.lrs_at(5) == [0.75] and sched.lrs_at(8) == [0.0]
    bad = ConfigNode({"_target_": "automodel.core.optim.build_lr_scheduler", "style": "cosin"})
    with pytest.raises(ConfigError, match="style must be one of cosine, linear, constant, wsd"):
        instantiate(bad, optimizer=opt, total_steps=8)


def test_scheduler_resume_keeps_the_saved_total_steps_unless_the_shape_changed():
    _, _, sched = _train("cosine", 25)
    state = sched.state_dict()
    assert state["schedule"]["total_steps"] == TOTAL

    def resumed(**kw) -> WarmupDecayLR:
        opt = torch.optim.SGD(nn.Linear(4, 2).parameters(), lr=BASE)
        args = {"warmup_steps": WARMUP, "style": "cosine", "min_lr": MIN, **kw}
        new = build_lr_scheduler(opt, **args)
        new.load_state_dict(state)
        return new

    longer = resumed(total_steps=2 * TOTAL)  # e.g. max_steps raised on resume
    assert longer.total_steps == TOTAL
    assert longer.get_last_lr() == sched.get_last_lr()
    reshaped = resumed(total_steps=2 * TOTAL, min_lr=0.0)
    assert reshaped.total_steps == 2 * TOTAL
    assert reshaped.get_last_lr()[0] == pytest.approx(
        lr_at(25, base_lr=BASE, total_steps=2 * TOTAL, warmup_steps=WARMUP, min_lr=0.0)
    )
