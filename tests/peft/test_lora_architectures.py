"""LoRA on transformers architectures beyond Llama: GPT-2's Conv1D, MoE routers, Falcon.

GPT-2 keeps its projections in ``transformers.pytorch_utils.Conv1D`` (weight ``(in, out)``);
adapters must match peft's ``fan_in_fan_out`` handling tensor for tensor, in both directions.
PhiMoE and Llama 4 have routers that subclass ``nn.Linear`` but return routing tuples: they
are never wrapped, nor are Mamba's projections whose weights its mixer hands to the fused
kernel (peft refuses adapters on them for the same reason). Tiny float32 models built from configs (no downloads); logits compared with
rtol=1e-5, atol=1e-6 (a missing or wrong-way transpose gives differences of order 1e-2).
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from _shared import TINY_FAMILIES
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    FalconConfig,
    FalconForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    Llama4ForCausalLM,
    Llama4TextConfig,
)
from transformers.models.llama4.modeling_llama4 import Llama4Router
from transformers.models.phimoe.modeling_phimoe import PhimoeTopKRouter
from transformers.pytorch_utils import Conv1D

from automodel.peft import (
    LoraConfig,
    LoraConfigError,
    LoraLinear,
    apply_lora,
    load_adapter,
    lora_modules,
    lora_state_dict,
    merge_lora,
    merged_state_dict,
    save_adapter,
    unload_lora,
    unmerge_lora,
)

TOL = dict(rtol=1e-5, atol=1e-6)
# peft calls a transformers API that transformers 5 marks deprecated; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
GPT2_TARGETS = [
    f"transformer.h.{i}.{name}"
    for i in range(2)
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
]
_TEMPLATES: dict[str, nn.Module] = {}


def _tiny(name: str) -> nn.Module:
    """A fresh copy of one tiny model (seeded once, then deep-copied), in eval mode."""
    if name not in _TEMPLATES:
        small = dict(vocab_size=64, num_hidden_layers=2, num_attention_heads=4)
        builders = {
            "gpt2": lambda: GPT2LMHeadModel(
                GPT2Config(
                    n_embd=32,
                    n_layer=2,
                    n_head=4,
                    vocab_size=64,
                    n_positions=64,
                    bos_token_id=0,
                    eos_token_id=0,
                )
            ),
            "llama4": lambda: Llama4ForCausalLM(
                Llama4TextConfig(
                    **small,
                    hidden_size=32,
                    intermediate_size=64,
                    intermediate_size_mlp=64,
                    num_key_value_heads=2,
                    head_dim=8,
                    num_local_experts=4,
                    num_experts_per_tok=1,
                )
            ),
            "falcon": lambda: FalconForCausalLM(
                FalconConfig(**small, hidden_size=32, bos_token_id=0, eos_token_id=0)
            ),
        }
        for family in ("phimoe", "mamba"):  # the suite's shared tiny configs
            config = AutoConfig.for_model(family, **TINY_FAMILIES[family])
            builders[family] = lambda config=config: AutoModelForCausalLM.from_config(config)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            _TEMPLATES[name] = builders[name]().eval()
    return copy.deepcopy(_TEMPLATES[name])


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(3))


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _randomize_b(model: nn.Module, seed: int = 1) -> None:
    """Random lora_B (ours or peft's), so the adapters change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


@pytest.fixture(params=[False, True], ids=["lora", "dora"])
def gpt2_lora(request) -> nn.Module:
    """Tiny GPT-2 with our LoRA on every Conv1D projection and random B."""
    model = _tiny("gpt2")
    torch.manual_seed(1)
    apply_lora(model, LoraConfig(dim=4, alpha=8, match_all_linear=True, use_dora=request.param))
    _randomize_b(model)
    return model


def test_gpt2_match_all_linear_selects_conv1d_projections(ids):
    base = _tiny("gpt2")
    model = apply_lora(_tiny("gpt2"), LoraConfig(dim=4, match_all_linear=True))
    assert [path for path, _ in lora_modules(model)] == GPT2_TARGETS  # not lm_head
    module = model.get_submodule("transformer.h.0.attn.c_attn")
    assert module.fan_in_fan_out and (module.in_features, module.out_features) == (32, 96)
    assert module.weight.shape == (32, 96)  # the base weight keeps Conv1D's (in, out) layout
    assert module.lora_A.weight.shape == (4, 32) and module.lora_B.weight.shape == (96, 4)
    assert torch.equal(_logits(model, ids), _logits(base, ids))  # B = 0: the base output


def test_gpt2_training_changes_outputs(ids):
    base_logits = _logits(_tiny("gpt2"), ids)
    model = apply_lora(_tiny("gpt2"), LoraConfig(dim=4, alpha=8, match_all_linear=True))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == 2 * len(GPT2_TARGETS)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    assert (_logits(model, ids) - base_logits).abs().max() > 1e-3
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), f"{name} changed but is frozen"


def test_gpt2_saved_adapter_loads_in_peft(gpt2_lora, ids, tmp_path):
    expected = _logits(gpt2_lora, ids)
    save_adapter(gpt2_lora, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True
    assert config["target_modules"] == GPT2_TARGETS

    theirs = PeftModel.from_pretrained(_tiny("gpt2"), tmp_path).eval()
    assert theirs.peft_config["default"].fan_in_fan_out
    torch.testing.assert_close(_logits(theirs, ids), expected, **TOL)

    ours = load_adapter(_tiny("gpt2"), tmp_path)  # and back into ours
    torch.testing.assert_close(_logits(ours, ids), expected, **TOL)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_gpt2_peft_adapter_loads_in_ours(ids, tmp_path, use_dora):
    torch.manual_seed(2)
    theirs = get_peft_model(
        _tiny("gpt2"),
        PeftLoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["c_attn", "c_proj", "c_fc"],
            fan_in_fan_out=True,
            use_dora=use_dora,
        ),
    ).eval()
    _randomize_b(theirs, seed=4)
    expected = _logits(theirs, ids)
    assert (expected - _logits(_tiny("gpt2"), ids)).abs().max() > 1e-3
    theirs.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["fan_in_fan_out"] is True

    ours = load_adapter(_tiny("gpt2"), tmp_path)
    assert [path for path, _ in lora_modules(ours)] == GPT2_TARGETS
    torch.testing.assert_close(_logits(ours, ids), expected, **TOL)


def test_gpt2_merge_equals_unmerged(gpt2_lora, ids):
    lora_logits = _logits(gpt2_lora, ids)
    state = merged_state_dict(gpt2_lora)
    from_state = merged_state_dict(gpt2_lora, state=gpt2_lora.state_dict())  # the FSDP2 path
    assert state.keys() == _tiny("gpt2").state_dict().keys()
    for name, tensor in state.items():
        torch.testing.assert_close(from_state[name], tensor, **TOL)
        assert tensor.is_contiguous(), name

    plain = _tiny("gpt2")
    plain.load_state_dict(state)  # a merged export loads into the plain model
    torch.testing.assert_close(_logits(plain, ids), lora_logits, **TOL)

    base_weight = gpt2_lora.get_submodule("transformer.h.0.mlp.c_fc").weight.detach().clone()
    merge_lora(gpt2_lora)
    torch.testing.assert_close(_logits(gpt2_lora, ids), lora_logits, **TOL)
    unmerge_lora(gpt2_lora)
    weight = gpt2_lora.get_submodule("transformer.h.0.mlp.c_fc").weight
    torch.testing.assert_close(weight, base_weight, **TOL)
    torch.testing.assert_close(_logits(gpt2_lora, ids), lora_logits, **TOL)

    unload_lora(merge_lora(gpt2_lora))
    module = gpt2_lora.get_submodule("transformer.h.0.attn.c_attn")
    assert type(module) is Conv1D and module.weight.shape == (32, 96)
    assert gpt2_lora.state_dict().keys() == _tiny("gpt2").state_dict().keys()
    torch.testing.assert_close(_logits(gpt2_lora, ids), lora_logits, **TOL)


MOE_ROUTERS = [
    ("phimoe", PhimoeTopKRouter, "model.layers.0.mlp.router"),
    ("llama4", Llama4Router, "model.layers.0.feed_forward.router"),
]


@pytest.mark.parametrize(("name", "router_cls", "router"), MOE_ROUTERS, ids=["phimoe", "llama4"])
def test_moe_router_is_not_wrapped(name, router_cls, router, ids, caplog):
    model = _tiny(name)
    with caplog.at_level(logging.DEBUG, logger="automodel.peft"):
        apply_lora(model, LoraConfig(dim=4, match_all_linear=True))
    assert f"LoRA skips {router} ({router_cls.__name__})" in caplog.text
    paths = [path for path, _ in lora_modules(model)]
    assert "model.layers.0.self_attn.q_proj" in paths
    assert not any("router" in path for path in paths)
    assert type(model.get_submodule(router)) is router_cls

    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [m.lora_B.weight.grad for _, m in lora_modules(model)]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)

    # A pattern that also selects plain linear modules skips the router; exclude may name it.
    mixed = apply_lora(_tiny(name), LoraConfig(dim=4, target_modules=[r"re:.*\.(router|q_proj)"]))
    assert [p for p, _ in lora_modules(mixed)] == [
        f"model.layers.{i}.self_attn.q_proj" for i in (0, 1)
    ]
    excluded = apply_lora(
        _tiny(name), LoraConfig(dim=4, match_all_linear=True, exclude_modules=["router"])
    )
    assert [p for p, _ in lora_modules(excluded)] == paths


@pytest.mark.parametrize(("name", "router_cls", "router"), MOE_ROUTERS, ids=["phimoe", "llama4"])
@pytest.mark.parametrize("pattern", ["exact", "bare", "glob"])
def test_naming_a_router_is_a_config_error(name, router_cls, router, pattern):
    target = {"exact": router, "bare": "router", "glob": "*.router"}[pattern]
    model = _tiny(name)
    with pytest.raises(LoraConfigError) as err:
        apply_lora(model, LoraConfig(dim=4, target_modules=["q_proj", target]))
    message = str(err.value)
    assert f"selects {router} ({router_cls.__module__}.{router_cls.__qualname__}" in message
    assert "not a plain linear map" in message and "LoRA cannot be added" in message
    assert not any(isinstance(m, LoraLinear) for m in model.modules())  # nothing half-applied


def test_linear_subclasses_by_their_forward(ids):
    class Scaled(nn.Linear):  # overrides forward: not a plain linear map
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    class Initialised(nn.Linear):  # only changes __init__: wrapped like nn.Linear
        pass

    model = nn.Sequential(Initialised(8, 8), Scaled(8, 8), nn.Linear(8, 8))
    apply_lora(model, LoraConfig(dim=2, match_all_linear=True))
    assert [path for path, _ in lora_modules(model)] == ["0", "2"]

    # Falcon's FalconLinear overrides forward with an exact x W^T + b: it is wrapped.
    base = _tiny("falcon")
    falcon = apply_lora(_tiny("falcon"), LoraConfig(dim=4, match_all_linear=True))
    names = {path.rsplit(".", 1)[-1] for path, _ in lora_modules(falcon)}
    assert names == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
    torch.testing.assert_close(_logits(falcon, ids), _logits(base, ids), **TOL)


def test_conv1d_adapter_tensors_use_linear_shapes(gpt2_lora):
    """lora_A is (r, in) and lora_B (out, r) for a Conv1D too, as in peft's files."""
    state = lora_state_dict(gpt2_lora)
    assert state["transformer.h.0.mlp.c_fc.lora_A.weight"].shape == (4, 32)
    assert state["transformer.h.0.mlp.c_fc.lora_B.weight"].shape == (128, 4)


def test_mamba_wraps_only_the_projections_its_mixer_calls(ids, tmp_path, caplog):
    # The mixer's fused path passes x_proj, dt_proj and out_proj weights to mamba_inner_fn
    # (and multiplies by dt_proj.weight itself): LoRA there would be skipped on GPU.
    model = _tiny("mamba")
    reference = _logits(model, ids)
    with caplog.at_level(logging.DEBUG, logger="automodel.peft._matching"):
        apply_lora(model, LoraConfig(match_all_linear=True, dim=4))
    assert [name for name, _ in lora_modules(model)] == [
        f"backbone.layers.{i}.mixer.in_proj" for i in (0, 1)
    ]
    assert "out_proj" in caplog.text and "uses its weight directly" in caplog.text
    _randomize_b(model)
    ours = _logits(model, ids)
    assert not torch.allclose(ours, reference)
    save_adapter(model, tmp_path)
    theirs = PeftModel.from_pretrained(_tiny("mamba"), tmp_path)  # peft refuses out_proj here
    assert torch.allclose(_logits(theirs, ids), ours, **TOL)
    for name in ("out_proj", "x_proj", "dt_proj"):
        with pytest.raises(LoraConfigError, match=rf"{name} .*uses its weight directly"):
            apply_lora(_tiny("mamba"), LoraConfig(target_modules=[name], dim=4))
