"""The `moe:` section of finetune.llm on the tiny Qwen3-MoE example: balancing, metrics, export,
and expert parallelism (`distributed.ep_size`) on two CPU ranks against one process."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from _shared import MOE, SFT
from safetensors.torch import load_file

from automodel.core.config import ConfigError, load_config
from automodel.recipes import read_distributed
from automodel.recipes.llm import main

STEPS, MIDDLE = 4, 2
# Without balancing loss: the aux loss is per micro-batch, and 2 ranks group the samples into
# other micro-batches than 1 process (rank r reads every 2nd sample), so it differs by ~1e-5.
NO_AUX = "--moe.balancing=none"


@pytest.fixture(scope="module")
def overrides(short_run, small_data):
    """`overrides(run_dir, *extra)`: 4 steps of global batch 8 (local 2), validation and a
    checkpoint every 2 steps."""
    return lambda run_dir, *extra: short_run(run_dir, small_data, STEPS, MIDDLE, *extra)


@pytest.fixture(scope="module")
def aux_run(tmp_path_factory, overrides, run_recipe, monkeypatch_module):
    run_dir = tmp_path_factory.mktemp("moe_aux")
    return run_recipe(MOE, overrides(run_dir)), run_dir


def test_moe_blocks_train_with_the_aux_loss_and_report_the_load(aux_run, jsonl_rows):
    recipe, run_dir = aux_run
    blocks = [m for m in recipe.unwrapped.modules() if type(m).__name__ == "MoE"]
    assert len(blocks) == 2  # both decoder layers' MLPs swapped
    rows = jsonl_rows(run_dir / "training.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for row in rows:
        assert row["moe/aux_loss"] > 0  # coefficient × switch loss, summed over 2 layers
        assert row["moe/imbalance_max"] >= row["moe/imbalance_mean"] >= 1.0
        assert {"moe/layer_0/imbalance", "moe/layer_1/dead_experts"} <= row.keys()
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_training_forwards_count_real_tokens_not_padding(aux_run):
    """The recipe's micro-batch context: routers count top-k slots of unpadded tokens only."""
    from automodel.moe import expert_load, moe_metrics

    recipe, _ = aux_run
    batch = next(b for b in recipe.train_loader if (b["attention_mask"] == 0).any())  # padded
    mask = batch["attention_mask"]
    recipe.model.train()
    moe_metrics(recipe.unwrapped, reset=True)
    with recipe.moe.real_tokens_only(batch):
        recipe.forward_loss(recipe.prepare(batch), 1)
    loads = expert_load(recipe.unwrapped)
    assert [int(load.sum()) for load in loads.values()] == [int(mask.sum()) * 2] * 2  # top-2


def test_the_checkpoint_loads_in_plain_transformers_with_the_same_logits(aux_run):
    from transformers import AutoModelForCausalLM

    recipe, run_dir = aux_run
    model_dir = run_dir / f"checkpoints/epoch_0_step_{STEPS}/model"
    loaded, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    assert not any(info.values()), info
    assert type(loaded.model.layers[0].mlp).__name__ == "Qwen3MoeSparseMoeBlock"  # HF's own
    ids = torch.randint(4, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    recipe.unwrapped.eval()
    with torch.no_grad():
        ours, theirs = recipe.unwrapped(ids).logits, loaded.eval()(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_bias_balancing_moves_the_routing_bias(overrides, run_recipe, monkeypatch_module, tmp_path):
    recipe = run_recipe(MOE, overrides(tmp_path, "--moe.balancing=bias"))
    biases = [
        m.e_score_correction_bias
        for m in recipe.unwrapped.modules()
        if type(m).__name__ == "TopKRouter"
    ]
    assert len(biases) == 2
    # after 4 updates of ±rate each, every expert's bias is a non-zero multiple of the rate
    assert all(bool((b != 0).any()) for b in biases)
    assert all(float(b.abs().max()) <= STEPS * 1e-3 + 1e-9 for b in biases)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, overrides, run_recipe, monkeypatch_module) -> Path:
    """The reference without balancing loss, in this process (2 × 4 accumulations per step)."""
    run_dir = tmp_path_factory.mktemp("moe_one")
    recipe = run_recipe(MOE, overrides(run_dir, NO_AUX))
    assert recipe.parallel.world_size == 1 and recipe.step_scheduler.grad_acc_steps == 4
    return run_dir


MERGED_LORA = [
    "--+peft={_target_: automodel.peft.LoraConfig, dim: 4, target_modules: [q_proj, v_proj]}",
    "--+checkpoint.save_merged_model=true",
]
LAYOUTS = {  # (processes, overrides) of the same run
    "fsdp2": (2, []),
    "ep_fsdp2": (2, ["--+distributed.ep_size=2"]),
    "ep_ddp": (2, ["--+distributed.ep_size=2", "--+distributed.strategy=ddp"]),
    # 2 expert-parallel groups of 2: each expert has a replica whose gradient it adds
    "ep_replicated": (4, ["--+distributed.ep_size=2"]),
    # dp 2 × cp 2: each ep group is the 2 cp ranks of one dp rank; the other dp rank's group
    # holds the same experts and adds its gradient
    "ep_cp": (4, ["--+distributed.ep_size=2", "--+distributed.cp_size=2"]),
    # ep 4 over dp 2 × cp 2 (more than dp_size, as NeMo AutoModel allows): no replicas
    "ep_over_cp": (4, ["--+distributed.ep_size=4", "--+distributed.cp_size=2"]),
    # 2 pipeline stages, each on cp 2 with its experts shared out over the 2 cp ranks
    "ep_cp_pp": (4, [*(f"--+distributed.{k}_size=2" for k in ("ep", "cp", "pp"))]),
    # LoRA on the attention with the experts shared out, merged into one folder at the end
    "ep_lora_merged": (2, ["--+distributed.ep_size=2", *MERGED_LORA]),
}


@pytest.fixture(scope="module")
def launched(tmp_path_factory, overrides, pooled_layouts):
    """`launched(layout)`: (run dir, stderr) of LAYOUTS, one torchrun launch per process count."""
    without_aux = lambda run_dir, *extra: overrides(run_dir, NO_AUX, *extra)  # noqa: E731
    return pooled_layouts(tmp_path_factory, "moe", MOE, LAYOUTS, without_aux)


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if "lora" not in name])
def test_parallel_layouts_match_one_process(layout, launched, one_process, assert_same_training):
    """Losses, grad norms, validation and the gathered final weights (all 8 experts of each
    layer, though each rank held 4 with ep_size 2) match one process.

    ep_replicated (4 processes: dp 4 = 2 replicas × ep 2) also passed with ep_size 4 by hand.
    """
    run_dir, stderr = launched(layout)
    ep = next((a.split("=")[1] for a in LAYOUTS[layout][1] if "ep_size" in a), None)
    assert ("expert parallel" in stderr) == (ep is not None)
    assert ep is None or f"expert parallel {ep}" in stderr
    assert_same_training(run_dir, one_process, range(1, STEPS + 1), MIDDLE)


def test_a_merged_lora_model_of_expert_parallel_ranks_is_the_one_process_one(
    launched, overrides, run_recipe, tmp_path, monkeypatch_module
):
    """EP 2 with LoRA, merged at the end: the same tensors under the same names as one process
    writes (the tied LM head once, under the embedding's name, as save_pretrained keeps it)."""
    run_dir, _ = launched("ep_lora_merged")
    run_recipe(MOE, overrides(tmp_path, NO_AUX, *MERGED_LORA))
    ours = load_file(run_dir / "merged_model/model.safetensors")
    reference = load_file(tmp_path / "merged_model/model.safetensors")
    assert ours.keys() == reference.keys() and "lm_head.weight" not in ours
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-4, atol=2e-5, msg=name)


def test_expert_parallel_checkpoint_resumes_on_one_process(
    launched, one_process, overrides, run_recipe, assert_same_training, resume_dir_from, tmp_path
):
    """EP 2 -> 1 process: the optimizer state of the expert shards reshards into whole experts."""
    source, _ = launched("ep_fsdp2")
    resume_dir_from(source, tmp_path, MIDDLE)
    recipe = run_recipe(MOE, overrides(tmp_path, NO_AUX, "--+checkpoint.restore_from=latest"))
    assert recipe.parallel.world_size == 1
    assert_same_training(tmp_path, one_process, range(MIDDLE + 1, STEPS + 1), MIDDLE)


def test_one_process_checkpoint_resumes_with_expert_parallelism(
    one_process, overrides, run_cli, assert_same_training, resume_dir_from, tmp_path
):
    """1 process -> EP 2: each rank restores its half of the experts and of their Adam state."""
    resume_dir_from(one_process, tmp_path, MIDDLE)
    resume = ["--+checkpoint.restore_from=latest", *LAYOUTS["ep_fsdp2"][1]]
    stderr = run_cli(MOE, overrides(tmp_path, NO_AUX, *resume))
    assert f"at step {MIDDLE} (saved by 1 process(es), now 2)" in stderr
    assert_same_training(tmp_path, one_process, range(MIDDLE + 1, STEPS + 1), MIDDLE)


def test_expert_parallel_settings_checked_before_any_process_starts(monkeypatch_module):
    def read(*overrides: str, world_size: int = 2):
        return read_distributed(load_config(MOE, list(overrides)), world_size=world_size)

    assert read("--+distributed.ep_size=2")[1] == 2  # no processes of its own: dp stays 2
    with_cp = read("--+distributed.ep_size=2", "--+distributed.cp_size=2", world_size=4)
    assert (with_cp[0].cp_size, with_cp[1]) == (2, 2)
    over_cp = read("--+distributed.ep_size=4", "--+distributed.cp_size=2", world_size=4)
    assert (over_cp[0].ep_size, over_cp[1]) == (4, 2)  # ep 4 over dp 2 × cp 2
    with pytest.raises(ConfigError, match=r"ep_size 2 does not divide dp_size 1 × cp_size 1 = 1"):
        read("--+distributed.ep_size=2", "--+distributed.strategy=fsdp2", world_size=1)
    with pytest.raises(ConfigError, match="with tp_size > 1 is not supported"):
        read("--+distributed.ep_size=2", "--+distributed.tp_size=2", world_size=4)
    with pytest.raises(ConfigError, match="needs a moe: section"):
        read_distributed(load_config(SFT, ["--+distributed.ep_size=2"]), world_size=2)


@pytest.mark.parametrize(
    ("config", "override", "message"),
    [
        (MOE, "--moe.balancing=sometimes", "balancing"),
        (MOE, "--moe.ep_size=2", "ep_size"),
        (SFT, "--+moe.balancing=aux_loss", "no supported MoE block in LlamaForCausalLM"),
        (MOE, "--moe.dispatcher=nccl", "expected one of all_to_all, deepep, got 'nccl'"),
        (MOE, "--moe.dispatcher=deepep", "set distributed.ep_size > 1"),
    ],
)
def test_bad_moe_settings_are_config_errors(
    config, override, message, overrides, tmp_path, monkeypatch_module, capsys
):
    assert main(["-c", str(config), *overrides(tmp_path, override)]) == 2
    err = capsys.readouterr().err
    assert message in err and "moe" in err and "Traceback" not in err


def test_deepep_without_the_extra_stops_every_rank_with_the_key(overrides, run_cli, tmp_path):
    """`moe.dispatcher: deepep` where DeepEP cannot run (here: no deep_ep, no CUDA): a real
    launch stops with the config error (exit 2) naming the key and the extra, no traceback.

    Both ranks raise it; torchrun may stop the slower one (SIGTERM) once the first has failed,
    so only the first failure's exit code is fixed, and its error must be on stderr whichever
    rank it was (rank 1's prefixed with its rank)."""
    extra = ["--distributed.ep_size=2", "--moe.dispatcher=deepep"]
    err = run_cli(MOE, overrides(tmp_path, *extra), fails=True)
    first = re.search(r"rank (\d) \(exit code 2\).*the first was rank \1,", err)
    assert first, err[-2000:]
    prefix = "" if first.group(1) == "0" else f"rank {first.group(1)}: "
    said = rf"\n{re.escape(prefix)}error: .*moe\.dispatcher: the DeepEP backend needs"
    assert re.search(said, err), err[-2000:]
    assert "pip install automodel-moe[deepep]" in err
    assert "Traceback" not in err
