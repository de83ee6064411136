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


def test_expert_parallel_experts_leave_their_adapters_to_the_strategy(single_rank_group):
    """With ep_size > 1 (here on a one-process mesh) the recipe keeps each rank's experts and
    the strategy leaves out exactly their weights: the experts' LoRA factors stay ordinary
    parameters, which FSDP2/DDP average over the dp ranks like every other adapter (each
    rank's forward adapts its own experts from their slices of the whole factors)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from automodel.distributed import build_strategy
    from automodel.moe import patch_hf_moe
    from automodel.peft import LoraConfig, apply_lora
    from automodel.recipes import Moe, MoeStep, Parallel
    from automodel.recipes._peft import build_lora_config

    overrides = ["--+distributed.ep_size=2", *PEFT]
    config = build_lora_config(load_config(MOE, overrides, sections=SECTIONS))
    assert config.target_parameters == ["*.experts.gate_up_proj", "*.experts.down_proj"]
    model = _base()
    patch_hf_moe(model, balancing="none")
    apply_lora(model, LoraConfig(dim=4, target_parameters=config.target_parameters))
    mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("ep_replicas", "ep"))
    parallel = Parallel(torch.device("cpu"), 1, 0, 1, mesh, None, build_strategy("none"), ep_size=2)
    step = MoeStep(model, Moe(balancing="none"), parallel)
    left_out = step.shard_experts(load_config(MOE, sections=SECTIONS))
    names = {n for n, p in model.named_parameters() if p in left_out}
    assert names == {f"model.layers.{i}.mlp.experts.{w}" for i in range(2) for w in ("gate_up_proj", "down_proj")}  # fmt: skip
    assert all(isinstance(p, DTensor) and not p.requires_grad for p in left_out)
    model.train()
    model(IDS, labels=IDS).loss.backward()
    step.reduce_expert_grads()  # the expert weights are frozen: nothing of theirs to reduce
    factors = [p for p in model.parameters() if p.requires_grad]
    assert len(factors) == 8 and all(type(p.grad) is torch.Tensor for p in factors)
    assert sum(p.grad.abs().sum() for p in factors) > 0  # B's (A's is zero while B is)


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
    (`*` also every linear layer, the LM head included), with expert parallelism too; their
    rank scaling and DoRA with it are refused."""
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

    with_ep = translate(_their_config(8, target_modules=["*.mlp.experts"]), {}, "cfg.yaml", 8).data
    assert with_ep["distributed"]["ep_size"] == 8 and with_ep["peft"]["target_parameters"]
    refused = {
        "peft.moe_rank_scaling": (
            _their_config(1, target_modules=["*"], moe_rank_scaling=True), "moe_rank_scaling: false"
        ),
    }  # fmt: skip
    for key, (theirs, message) in refused.items():
        with pytest.raises(ConfigError) as info:
            translate(theirs, {}, "cfg.yaml", 8)
        assert [p.key for p in info.value.problems] == [key]
        assert message in info.value.problems[0].message
