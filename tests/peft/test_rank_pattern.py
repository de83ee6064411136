"""Another rank or alpha for some targets (`rank_pattern`, `alpha_pattern`), against Hugging Face
peft on a tiny Qwen3-MoE (linear modules and stacked expert weights alike): the file ours
writes loads in peft with the same logits, and peft's loads here."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from automodel.peft import (
    LoraConfig,
    LoraConfigError,
    apply_lora,
    load_adapter,
    lora_modules,
    lora_parameters,
    save_adapter,
)

TOL = dict(rtol=1e-5, atol=1e-6)
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
IDS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
_BASE: list[torch.nn.Module] = []


def base() -> torch.nn.Module:
    """A fresh copy of one tiny Qwen3-MoE (4 experts, top-2; H=24, expert I=8), in eval mode."""
    if not _BASE:
        config = AutoConfig.for_model(
            "qwen3_moe", vocab_size=64, hidden_size=24, num_hidden_layers=2,
            num_attention_heads=3, num_key_value_heads=1, head_dim=8, num_experts_per_tok=2,
            moe_intermediate_size=8, num_experts=4,
        )  # fmt: skip
        with torch.random.fork_rng():
            torch.manual_seed(0)
            _BASE.append(AutoModelForCausalLM.from_config(config).eval())
    return copy.deepcopy(_BASE[0])


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_peft_loads_our_rank_and_alpha_patterns_with_the_same_logits(randomize_adapters, tmp_path):
    config = LoraConfig(
        dim=4, alpha=8, target_modules=["q_proj", "o_proj"], target_parameters=EXPERTS,
        rank_pattern={"experts.down_proj": 2, r"layers\.1\.self_attn\.q_proj": 3},
        alpha_pattern={"o_proj": 5},
    )  # fmt: skip
    ours = apply_lora(base(), config)
    randomize_adapters(ours, seed=4, std=0.3)

    linear = {path.split(".", 2)[-1]: m for path, m in lora_modules(ours)}
    assert linear["0.self_attn.q_proj"].lora_A.weight.shape == (4, 24)
    assert linear["1.self_attn.q_proj"].lora_A.weight.shape == (3, 24)
    assert linear["1.self_attn.q_proj"].scaling == pytest.approx(8 / 3)
    assert linear["0.self_attn.o_proj"].scaling == pytest.approx(5 / 4)
    stacked = {path.split(".", 2)[-1]: a for path, a in lora_parameters(ours)}
    down, gate_up = stacked["0.mlp.experts.down_proj"], stacked["0.mlp.experts.gate_up_proj"]
    assert down.lora_A.shape == (2 * 4, 8) and down.scaling == pytest.approx(8 / 2)  # r*E, I
    assert gate_up.lora_A.shape == (4 * 4, 24) and gate_up.scaling == pytest.approx(8 / 4)

    save_adapter(ours, tmp_path)
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (written["r"], written["lora_alpha"]) == (4, 8)
    assert written["rank_pattern"] == {"down_proj": 2, "1.self_attn.q_proj": 3}
    assert written["alpha_pattern"] == {"o_proj": 5}

    theirs = PeftModel.from_pretrained(base(), tmp_path).eval()
    assert theirs.base_model.model.model.layers[1].self_attn.q_proj.r["default"] == 3
    torch.testing.assert_close(logits(theirs), logits(ours), **TOL)
    torch.testing.assert_close(logits(load_adapter(base(), tmp_path)), logits(ours), **TOL)
    assert not torch.allclose(logits(ours), logits(base()), atol=1e-2)  # the adapters act


def test_a_peft_file_with_patterns_loads_here(tmp_path):
    """peft's file keeps its user's keys as written (a key naming no target too)."""
    theirs = get_peft_model(
        base(),
        PeftLoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj"], target_parameters=EXPERTS,
            rank_pattern={r"experts\.[^.]+": 2, "v_proj": 6}, alpha_pattern={"q_proj": 3},
        ),
    )  # fmt: skip
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    theirs.save_pretrained(tmp_path)
    ours = load_adapter(base(), tmp_path)
    stacked = dict(lora_parameters(ours))
    assert stacked["model.layers.0.mlp.experts.down_proj"].rank == 2
    torch.testing.assert_close(logits(ours), logits(theirs.eval()), **TOL)


def test_bad_patterns_are_named():
    cases = {
        "k_proj": r"rank_pattern key 'k_proj' matches none of the 2 adapted targets \(model\.layers\.0\.self_attn\.q_proj",
        "self_attn": "matches none of the 2 adapted targets",  # the end of a path, whole names
    }  # fmt: skip
    for key, message in cases.items():
        with pytest.raises(LoraConfigError, match=message):
            apply_lora(base(), LoraConfig(target_modules=["q_proj"], rank_pattern={key: 2}))
    with pytest.raises(LoraConfigError, match=r"rank_pattern must be a mapping from a path regex"):
        LoraConfig(target_modules=["q_proj"], rank_pattern=["q_proj"])
    with pytest.raises(LoraConfigError, match=r"alpha_pattern\['q_proj'\] must be positive"):
        LoraConfig(target_modules=["q_proj"], alpha_pattern={"q_proj": -1})
