"""Their MoE families that automodel.moe swaps: each one's blocks are swapped here, and
`moe.balancing: nemo_automodel` gives it the balancing of their model class."""

from __future__ import annotations

import pytest
import torch

from automodel.core.config._nemo_compat._moe_families import MOE_FAMILIES, moe_family
from automodel.moe import MoE
from automodel.moe._hf import SUPPORTED

from .conftest import causal_lm, make_config

# their family -> the tiny transformers models of it (conftest families)
SWAPPED_FAMILIES = {
    "Qwen3-MoE": ("qwen3_moe",),
    "DeepSeek-V3": ("deepseek_v3",),
    "DeepSeek-V3.2": ("deepseek_v32",),
    "GLM-4.5/4.7 MoE": ("glm4_moe", "glm4_moe_lite"),
    "GLM-5": ("glm_moe_dsa",),
    "MiniMax-M2": ("minimax_m2",),
    "Qwen3-Next": ("qwen3_next",),
    "Laguna": ("laguna",),
    "Nemotron 3": ("nemotron_h",),
    "Hy3": ("hy_v3",),
    "Kimi-Linear": ("kimi_linear",),
    "MiMo-V2-Flash": ("mimo_v2_flash",),
    "Qwen3.5 MoE": ("qwen3_5_moe",),
    "gpt-oss": ("gpt_oss",),
    "DeepSeek-V4": ("deepseek_v4",),
    "ERNIE-4.5 MoE": ("ernie4_5_moe",),
    "Mistral Small 4": ("mistral4",),
    "MiniMax-M3": ("minimax_m3",),
}
CASES = [(name, kind) for name, kinds in SWAPPED_FAMILIES.items() for kind in kinds]
# families swapped in a VLM's language model, which has no causal LM class of its own
VLM_ONLY = {"Qwen3-VL-MoE"}


def test_every_swapped_family_is_covered() -> None:
    assert {f.name for f in MOE_FAMILIES if f.swapped} == set(SWAPPED_FAMILIES) | VLM_ONLY


def test_qwen3_vl_moe_language_model_blocks_and_their_balancing() -> None:
    """Qwen3-VL-MoE's text model has supported blocks; their class's aux loss is the config's
    router_aux_loss_coef (transformers' default 0.001) over the top-k, as for Qwen3-MoE."""
    from transformers import Qwen3VLMoeTextConfig
    from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextModel

    from automodel.core.config._nemo_compat._moe_families import moe_family
    from automodel.recipes._moe_nemo import nemo_balancing

    config = Qwen3VLMoeTextConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, num_experts=8, num_experts_per_tok=4,
    )  # fmt: skip
    with torch.device("meta"):
        model = Qwen3VLMoeTextModel(config)
    assert any(type(m).__name__ in SUPPORTED for m in model.modules())
    assert moe_family("Qwen/Qwen3-VL-30B-A3B-Instruct").name == "Qwen3-VL-MoE"
    assert nemo_balancing(config) == {"balancing": "aux_loss", "aux_loss_coeff": 0.001 / 4}


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_swapped_family_blocks_and_their_balancing(name: str, kind: str) -> None:
    """A model of the family has supported MoE blocks, and `nemo_balancing` for its config is
    the balancing their class uses (`aux_loss` with router_aux_loss_coef / top-k)."""
    from automodel.recipes._moe_nemo import nemo_balancing

    config = make_config(kind)
    with torch.device("meta"):
        model = causal_lm(kind, config)
    assert any(type(m).__name__ in SUPPORTED for m in model.modules())
    family = next(f for f in MOE_FAMILIES if f.name == name)
    options = nemo_balancing(config)
    assert options["balancing"] == (family.balancing or "none")
    if family.balancing == "bias":
        assert options["bias_update_rate"] == 1e-3
    if family.balancing == "aux_loss":
        expected = config.router_aux_loss_coef / config.num_experts_per_tok
        assert options["aux_loss_coeff"] == pytest.approx(expected)


def test_qwen3_5_moe_balancing_and_its_default_coefficient() -> None:
    """Their Qwen3.5 MoE class reads router_aux_loss_coef with 0.001 as its default; its blocks
    are swapped (the family is not, since the translation would run its VLMs without it)."""
    from types import SimpleNamespace

    from automodel.recipes._moe_nemo import nemo_balancing

    config = make_config("qwen3_5_moe")
    assert nemo_balancing(config) == {
        "balancing": "aux_loss",
        "aux_loss_coeff": pytest.approx(config.router_aux_loss_coef / 2),
    }
    bare = SimpleNamespace(model_type="qwen3_5_moe_text", num_experts_per_tok=4)
    assert nemo_balancing(bare)["aux_loss_coeff"] == pytest.approx(0.001 / 4)
    zero = SimpleNamespace(model_type="laguna", num_experts_per_tok=4, router_aux_loss_coef=0)
    assert nemo_balancing(zero) == {"balancing": "none"}
    assert nemo_balancing(SimpleNamespace(model_type="bailing_moe")) is None


@pytest.mark.parametrize(
    ("model_name", "family", "swapped"),
    [
        ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", "Nemotron 3", True),
        ("nvidia/NVIDIA-Nemotron-3.5-Lightning-30B-A3B-BF16", "Nemotron 3", True),
        ("nvidia/Nemotron-3-Nano-Omni-30B-A3B-Reasoning-BF16", "Nemotron 3 Omni", False),
        ("MiniMaxAI/MiniMax-M2.5", "MiniMax-M2", True),
        ("MiniMaxAI/MiniMax-M3", "MiniMax-M3", True),
        ("zai-org/GLM-4.7-Flash", "GLM-4.5/4.7 MoE", True),
        ("/path/to/deepseek-v32", "DeepSeek-V3.2", True),
        ("Qwen/Qwen3.5-35B-A3B", "Qwen3.5 MoE", True),
        ("openai/gpt-oss-20b", "gpt-oss", True),
        ("deepseek-ai/DeepSeek-V4-Flash", "DeepSeek-V4", True),
        ("baidu/ERNIE-4.5-21B-A3B-PT", "ERNIE-4.5 MoE", True),
        ("mistralai/Mistral-Small-4-119B-2603", "Mistral Small 4", True),
        ("inclusionAI/Ling-mini-2.0", "Ling 2.0", False),
    ],
)
def test_family_of_model_name(model_name: str, family: str, swapped: bool) -> None:
    found = moe_family(model_name)
    assert (found.name, found.swapped) == (family, swapped)


@pytest.mark.parametrize(
    ("kind", "balancing"),
    [("minimax_m2", "bias"), ("laguna", "aux_loss"), ("deepseek_v4", "bias")],
)
def test_recipe_applies_their_balancing(kind: str, balancing: str) -> None:
    """`moe.balancing: nemo_automodel` in the recipe sets the swapped blocks' balancing."""
    from automodel.core.config import ConfigNode
    from automodel.recipes._moe import apply_moe
    from automodel.recipes._sections import Moe

    with torch.device("meta"):
        model = causal_lm(kind)
    model.to_empty(device="cpu")
    apply_moe(model, Moe(balancing="nemo_automodel"), ConfigNode({"moe": {}}))
    blocks = [m for m in model.modules() if isinstance(m, MoE)]
    assert blocks and {b.config.balancing for b in blocks} == {balancing}
    # the recipe's routing "learned" keeps DeepSeek-V4's hash layers hash-routed, unbalanced
    hashed = [b for b in blocks if b.config.routing == "hash"]
    assert len(hashed) == (kind == "deepseek_v4")
    assert all(b.topk_router.e_score_correction_bias is None for b in hashed)
