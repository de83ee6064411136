"""LoRA on the MoE experts in finetune.llm (`peft.target_parameters`) and in NeMo AutoModel
configs (their `target_modules` matching the experts), on the tiny Qwen3-MoE example, in-process."""

from __future__ import annotations

import json
from dataclasses import replace

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
SCALING = "--+moe.lora_rank_scaling=true"  # the experts at rank dim // top-k = 2


def _base():
    """The example's base model, built as the recipe builds it (same config, same seed)."""
    cfg = load_config(MOE, sections=SECTIONS)
    node = dict(cfg.model.to_dict())
    return resolve_target(node.pop("_target_"))(**node).eval()


@pytest.fixture(scope="module")
def expert_run(tmp_path_factory, short_run, small_data, run_recipe, monkeypatch_module):
    run_dir = tmp_path_factory.mktemp("expert_lora")
    extra = [*PEFT, "--+checkpoint.save_merged_model=true", "--moe.balancing=none", SCALING]
    return run_recipe(MOE, short_run(run_dir, small_data, STEPS, STEPS, *extra)), run_dir


def test_the_expert_adapter_checkpoint_loads_in_peft_and_merges(expert_run):
    """The adapter folder names the experts' weights in `target_parameters` (at rank 2 with
    `moe.lora_rank_scaling`, in `rank_pattern`); peft puts it on the plain transformers model
    with the trained logits, and the merged model gives them too."""
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
    assert (config["r"], config["rank_pattern"]) == (4, {"gate_up_proj": 2, "down_proj": 2})
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
    (`*` also every linear layer, the LM head included), with expert parallelism too; DoRA
    with it is refused."""
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
    with pytest.raises(ConfigError) as info:
        translate(_their_config(1, target_modules=["*"], use_dora=True), {}, "cfg.yaml", 8)
    assert [p.key for p in info.value.problems] == ["peft.use_dora"]
    assert "use_dora: false" in info.value.problems[0].message


def test_their_moe_rank_scaling_gives_the_experts_dim_over_top_k(tmp_path, caplog):
    """Their `moe_rank_scaling` is `moe.lora_rank_scaling`: the experts' stacked weights take
    rank dim // top-k (5 // 2 here, floored with a warning) and the same alpha, the linear
    layers dim; the adapter file says so with peft's rank_pattern, and peft loads it on the
    plain model with the same logits."""
    from peft import PeftModel

    from automodel.peft import lora_modules, lora_parameters, lora_state_dict, save_adapter
    from automodel.recipes import read_moe
    from automodel.recipes._peft import apply_peft

    theirs = _their_config(
        1, target_modules=["*.q_proj", "*.mlp.experts"], dim=5, alpha=20, moe_rank_scaling=True
    )
    ours = translate(theirs, {}, "cfg.yaml").data
    assert ours["moe"]["lora_rank_scaling"] is True and "moe_rank_scaling" not in ours["peft"]
    peft = dict(ours["peft"])
    config = resolve_target(peft.pop("_target_"))(**peft)
    scaling = ["--moe.balancing=none", "--+moe.lora_rank_scaling=true"]
    cfg = load_config(MOE, scaling, sections=SECTIONS)
    model = _base_swapped()
    apply_peft(model, config, cfg, None, torch.device("cpu"))
    assert "no multiple of 2 experts per token; the experts' LoRA takes rank 2" in caplog.text

    q_proj = dict(lora_modules(model))["model.layers.1.self_attn.q_proj"]
    assert q_proj.lora_A.weight.shape == (5, 64) and q_proj.scaling == 20 / 5
    experts = dict(lora_parameters(model))
    gate_up, down = (experts[f"model.layers.1.mlp.experts.{w}"] for w in ("gate_up_proj", "down_proj"))  # fmt: skip
    assert gate_up.lora_A.shape == (2 * 8, 64) and gate_up.lora_B.shape == (2 * 32, 2 * 8)
    assert down.lora_A.shape == (2 * 8, 32) and down.scaling == 20 / 2
    with torch.no_grad():
        for name, tensor in lora_state_dict(model).items():
            if "lora_B" in name:
                tensor.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    save_adapter(model, tmp_path)
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    # the rank most targets have (4 expert weights, 2 q_proj), the others by their last names
    assert (written["r"], written["lora_alpha"], written["alpha_pattern"]) == (2, 20, {})
    assert written["rank_pattern"] == {"q_proj": 5}
    with torch.no_grad():
        peft_logits = PeftModel.from_pretrained(_base(), tmp_path).eval()(IDS).logits
        torch.testing.assert_close(peft_logits, model.eval()(IDS).logits, rtol=1e-5, atol=1e-5)

    with pytest.raises(ConfigError, match=r"set peft\.dim to at least 2"):
        apply_peft(_base_swapped(), replace(config, dim=1), cfg, None, torch.device("cpu"))
    no_peft = load_config(MOE, ["--+moe.lora_rank_scaling=true"], sections=SECTIONS)
    with pytest.raises(ConfigError, match="the config has no peft: section"):
        read_moe(no_peft, 1)


def _base_swapped():
    from automodel.moe import patch_hf_moe

    model = _base()
    patch_hf_moe(model, balancing="none")
    return model
