"""LoRA on any nn.Module: plain PyTorch models, module selection rules, summaries."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from automodel.peft import (
    LoraConfig,
    LoraConfigError,
    LoraLinear,
    apply_lora,
    lora_modules,
    lora_state_dict,
    lora_summary,
)


class Net(nn.Module):
    """A custom module: nested linears, a non-linear layer, and a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 32))
        self.norm = nn.LayerNorm(32)
        self.proj = nn.Linear(32, 16, bias=False)
        self.classifier = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.proj(self.norm(self.encoder(x)))))


def _paths(model):
    return [path for path, _ in lora_modules(model)]


def _train(model, x, y, steps=30, lr=0.5):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", ["sequential", "custom"])
def test_training_plain_pytorch_model_updates_only_lora(kind):
    torch.manual_seed(0)
    if kind == "sequential":
        model = nn.Sequential(
            nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)
        )
        config = LoraConfig(dim=4, alpha=8, match_all_linear=True)
        expected = ["0", "2", "4"]
    else:
        model = Net()
        config = LoraConfig(dim=4, alpha=8, target_modules=["encoder.*", "proj", "classifier"])
        expected = ["encoder.0", "encoder.2", "proj", "classifier"]
    x = torch.randn(64, 12)
    with torch.no_grad():  # a target the adapted model can reach: the original output, shifted
        y = model(x) + 0.5 * x[:, :3]
    before = {k: v.clone() for k, v in model.state_dict().items()}

    apply_lora(model, config)
    assert _paths(model) == expected
    assert all(isinstance(model.get_submodule(p), LoraLinear) for p in expected)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(model))
    assert trainable == {f"{p}.lora_{ab}.weight" for p in expected for ab in "AB"}
    lora_init = {k: v.clone() for k, v in lora_state_dict(model).items()}

    losses = _train(model, x, y)
    assert losses[-1] < 0.5 * losses[0], losses

    after = model.state_dict()
    for key, value in before.items():  # base keys unchanged in name and value
        assert torch.equal(after[key], value), key
    for key, value in lora_init.items():
        assert not torch.equal(after[key], value), f"{key} was not trained"


def test_wrapped_model_starts_as_the_original():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(5, 12)
    with torch.no_grad():
        expected = model(x)
        apply_lora(model, LoraConfig(dim=2, match_all_linear=True, dropout=0.5))
        assert not any(m.training for _, m in lora_modules(model))  # keeps the model's eval mode
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_match_all_linear_excludes_output_head(make_llama):
    model = make_llama()
    head_before = model.lm_head.weight.clone()
    apply_lora(model, LoraConfig(dim=2, match_all_linear=True))
    paths = _paths(model)
    assert len(paths) == 14 and "lm_head" not in paths
    assert type(model.lm_head) is nn.Linear
    assert not model.lm_head.weight.requires_grad
    assert torch.equal(model.lm_head.weight, head_before)

    custom = Net()
    apply_lora(custom, LoraConfig(dim=2, match_all_linear=True))
    assert _paths(custom) == ["encoder.0", "encoder.2", "proj"]  # 'classifier' is a head name


def test_output_head_included_when_named(make_llama):
    model = make_llama()
    apply_lora(model, LoraConfig(dim=2, target_modules=["lm_head"]))
    assert _paths(model) == ["lm_head"]
    assert isinstance(model.lm_head, LoraLinear)

    both = make_llama()
    apply_lora(both, LoraConfig(dim=2, target_modules=["lm_head"], match_all_linear=True))
    assert len(_paths(both)) == 15 and _paths(both)[-1] == "lm_head"


def test_lora_summary_counts(make_llama):
    base_total = sum(p.numel() for p in make_llama().parameters())
    model = make_llama()
    apply_lora(model, LoraConfig(dim=4, target_modules=["q_proj", "v_proj"]))
    summary = lora_summary(model)
    # q_proj: 32 -> 32, v_proj: 32 -> 16 (2 kv heads of 8); rank 4; two layers.
    expected = 2 * (4 * (32 + 32) + 4 * (32 + 16))
    assert expected == 896
    assert summary.modules == tuple(
        f"model.layers.{i}.self_attn.{n}" for i in range(2) for n in ("q_proj", "v_proj")
    )
    assert summary.trainable_params == expected
    assert summary.total_params == base_total + expected
    assert summary.trainable_percent == pytest.approx(100 * expected / (base_total + expected))
    assert summary.quantized_modules == 0
    assert f"{expected:,} trainable" in str(summary) and "LoRA on 4 modules" in str(summary)

    dora = make_llama()
    apply_lora(dora, LoraConfig(dim=4, target_modules=["q_proj", "v_proj"], use_dora=True))
    assert lora_summary(dora).trainable_params == expected + 2 * (32 + 16)  # + magnitudes


def test_exclude_modules(make_llama):
    model = make_llama()
    apply_lora(model, LoraConfig(dim=2, match_all_linear=True, exclude_modules=["mlp.*", "k_proj"]))
    assert _paths(model) == [
        f"model.layers.{i}.self_attn.{n}" for i in range(2) for n in ("q_proj", "v_proj", "o_proj")
    ]
    named = make_llama()
    apply_lora(
        named,
        LoraConfig(dim=2, target_modules=["q_proj"], exclude_modules=[r"re:model\.layers\.1\..*"]),
    )
    assert _paths(named) == ["model.layers.0.self_attn.q_proj"]


def test_regex_and_glob_patterns(make_llama):
    model = make_llama()
    apply_lora(
        model, LoraConfig(dim=2, target_modules=[r"re:model\.layers\.0\.self_attn\.[qk]_proj"])
    )
    assert _paths(model) == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"]

    glob = make_llama()
    apply_lora(glob, LoraConfig(dim=2, target_modules=["model.layers.1.mlp.*"]))
    assert _paths(glob) == [
        f"model.layers.1.mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj")
    ]

    with pytest.raises(LoraConfigError, match=r"matches no nn.Linear"):
        # a regex must match the whole path, so a bare name is not enough
        apply_lora(make_llama(), LoraConfig(dim=2, target_modules=["re:q_proj"]))
