"""The `moe:` section of finetune.llm on the tiny Qwen3-MoE example: balancing, metrics, export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from automodel.recipes.llm import main

REPO = Path(__file__).resolve().parents[2]
MOE = REPO / "examples/llm_finetune/tiny_moe.yaml"
SFT = REPO / "examples/llm_finetune/tiny_sft.yaml"
STEPS = 4


@pytest.fixture(scope="module")
def overrides(short_run, small_data):
    """`overrides(run_dir, *extra)`: 4 steps of global batch 8 (local 2), validation and a
    checkpoint at the end."""
    return lambda run_dir, *extra: short_run(run_dir, small_data, STEPS, STEPS, *extra)


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


def test_two_fsdp2_ranks_match_one_process(
    overrides, run_recipe, run_cli, monkeypatch_module, tmp_path, jsonl_rows
):
    """Without balancing loss: the aux loss is per micro-batch, and 2 ranks group the samples
    into other micro-batches than 1 process (rank r reads every 2nd sample), so it differs."""
    reference = tmp_path / "one"
    no_aux = "--moe.balancing=none"
    run_recipe(MOE, overrides(reference, no_aux))
    run_cli(MOE, overrides(tmp_path, no_aux))
    for name in ("training.jsonl", "validation.jsonl"):
        ours, ref = jsonl_rows(tmp_path / name), jsonl_rows(reference / name)
        assert [r["step"] for r in ours] == [r["step"] for r in ref]
        for a, b in zip(ours, ref, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (name, a["step"])


@pytest.mark.parametrize(
    ("config", "override", "message"),
    [
        (MOE, "--moe.balancing=sometimes", "balancing"),
        (MOE, "--moe.ep_size=2", "ep_size"),
        (SFT, "--+moe.balancing=aux_loss", "no supported MoE block in LlamaForCausalLM"),
    ],
)
def test_bad_moe_settings_are_config_errors(
    config, override, message, overrides, tmp_path, monkeypatch_module, capsys
):
    assert main(["-c", str(config), *overrides(tmp_path, override)]) == 2
    err = capsys.readouterr().err
    assert message in err and "moe" in err and "Traceback" not in err
