"""LoRA on the MoE experts in finetune.llm (`peft.target_parameters`) and in NeMo AutoModel
configs (their `target_modules` matching the experts), on the tiny Qwen3-MoE example, in-process."""

from __future__ import annotations

import json

import pytest
import torch
from _shared import MOE

from automodel.core.config import ConfigError, load_config, resolve_target
from automodel.core.config._nemo_compat import translate
from automodel.recipes.llm.finetune import SECTIONS

STEPS = 2
EXPERTS = "['*.experts.gate_up_proj','*.experts.down_proj']"
IDS = torch.randint(4, 60, (2, 12), generator=torch.Generator().manual_seed(0))
PEFT = [
    "--+peft._target_=automodel.peft.LoraConfig",
    "--+peft.dim=4",
    "--+peft.target_modules=['q_proj','v_proj']",
    f"--+peft.target_parameters={EXPERTS}",
]
THEIRS = "nemo_automodel.components._peft.lora.PeftConfig"


def _base():
    """The example's base model, built as the recipe builds it (same config, same seed)."""
    cfg = load_config(MOE, sections=SECTIONS)
    node = dict(cfg.model.to_dict())
    return resolve_target(node.pop("_target_"))(**node).eval()


@pytest.fixture(scope="module")
def expert_run(tmp_path_factory, short_run, small_data, run_recipe, monkeypatch_module):
    run_dir = tmp_path_factory.mktemp("expert_lora")
    extra = [*PEFT, "--+checkpoint.save_merged_model=true", "--moe.balancing=none"]
    return run_recipe(MOE, short_run(run_dir, small_data, STEPS, STEPS, *extra)), run_dir


def test_the_expert_adapter_checkpoint_loads_in_peft_and_merges(expert_run):
    """The adapter folder names the experts' weights in `target_parameters`; peft puts it on
    the plain transformers model with the trained logits, and the merged model gives them too."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from automodel.peft import lora_summary

    recipe, run_dir = expert_run
    summary = lora_summary(recipe.unwrapped)
    assert len(summary.modules) == 4 and len(summary.parameters) == 4
    adapter = run_dir / f"checkpoints/epoch_0_step_{STEPS}/model"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["target_parameters"] == [
        f"model.layers.{i}.mlp.experts.{p}" for i in range(2) for p in ("gate_up_proj", "down_proj")
    ]
    recipe.unwrapped.eval()
    with torch.no_grad():
        ours = recipe.unwrapped(IDS).logits
        base = _base()
        assert not torch.allclose(base(IDS).logits, ours, atol=1e-4)  # the adapters trained
        theirs = PeftModel.from_pretrained(base, adapter).eval()(IDS).logits
        merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged_model").eval()(IDS).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged, ours, rtol=1e-5, atol=1e-5)


def test_expert_parallel_expert_lora_is_a_config_error(short_run, small_data, tmp_path):
    from automodel.recipes.llm import FinetuneRecipeForCausalLM

    overrides = [*short_run(tmp_path, small_data, 1, 1, *PEFT), "--distributed.ep_size=2"]
    recipe = FinetuneRecipeForCausalLM(load_config(MOE, overrides, sections=SECTIONS))
    with pytest.raises(ConfigError) as info:
        recipe.setup()
    assert [p.key for p in info.value.problems] == ["peft.target_parameters"]
    assert "set distributed.ep_size: 1" in info.value.problems[0].message


def _their_config(ep_size: int, **peft) -> dict:
    return {
        "recipe": "TrainFinetuneRecipeForNextTokenPrediction",
        "model": {
            "_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
            "pretrained_model_name_or_path": "Qwen/Qwen3-30B-A3B",
        },
        "distributed": {"strategy": "fsdp2", "ep_size": ep_size},
        "peft": {"_target_": THEIRS, "dim": 4, **peft},
    }


def test_their_lora_on_the_experts_adapts_the_experts_weights():
    """Their `target_modules` pattern that matches `mlp.experts` adapts its stacked weights
    (`*` also every linear layer, the LM head included); expert parallelism, their rank
    scaling and DoRA with it are refused."""
    from automodel.moe import patch_hf_moe
    from automodel.peft import apply_lora, lora_modules, lora_parameters

    def adapted(patterns: list[str]) -> tuple[set[str], set[str]]:
        ours = translate(_their_config(1, target_modules=patterns), {}, "cfg.yaml").data["peft"]
        model = _base()
        patch_hf_moe(model, balancing="none")
        apply_lora(model, resolve_target(ours.pop("_target_"))(**ours))
        linear = {p.rsplit(".", 1)[-1] for p, _ in lora_modules(model)}
        return linear, {p.split(".", 2)[-1] for p, _ in lora_parameters(model)}

    weights = {f"{i}.mlp.experts.{p}" for i in range(2) for p in ("gate_up_proj", "down_proj")}
    assert adapted(["*.mlp.experts"]) == (set(), weights)
    assert adapted(["*.q_proj", "*.mlp.experts"]) == ({"q_proj"}, weights)
    assert adapted(["*"]) == ({"q_proj", "k_proj", "v_proj", "o_proj", "lm_head"}, weights)
    assert adapted(["model.layers.1.*"]) == (
        {"q_proj", "k_proj", "v_proj", "o_proj"},
        {w for w in weights if w.startswith("1.")},
    )

    refused = {
        "distributed.ep_size": (_their_config(8, target_modules=["*"]), "set distributed.ep_size: 1"),
        "peft.moe_rank_scaling": (
            _their_config(1, target_modules=["*"], moe_rank_scaling=True), "moe_rank_scaling: false"
        ),
    }  # fmt: skip
    for key, (theirs, message) in refused.items():
        with pytest.raises(ConfigError) as info:
            translate(theirs, {}, "cfg.yaml", 8)
        assert [p.key for p in info.value.problems] == [key]
        assert message in info.value.problems[0].message
