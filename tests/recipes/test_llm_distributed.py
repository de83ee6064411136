"""Data-parallel finetune.llm: two CPU ranks (gloo) train exactly as one process on the same batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _shared import LORA, REPO, SFT
from safetensors.torch import load_file

from automodel.core.config import ConfigError, load_config
from automodel.recipes import read_distributed
from automodel.recipes.llm import main

STEPS, MIDDLE = 6, 3
WEIGHTS = f"checkpoints/epoch_0_step_{STEPS}/model/model.safetensors"
# The loss from hidden states and the (tied) LM head, 16 label tokens at a time
FUSED = [
    "--loss_fn._target_=automodel.core.losses.FusedLinearCrossEntropy",
    "--+loss_fn.chunk_len=16",
]


@pytest.fixture(scope="module")
def overrides(short_run, small_data) -> Callable[..., list[str]]:
    """`overrides(run_dir, *extra)`: 6 steps of global batch 8 (local 2) on 64 training rows,
    8 validation rows (4 per rank); validation and checkpoints at steps 3 and 6 (step 3 is the
    middle of the first epoch)."""
    return lambda run_dir, *extra: short_run(run_dir, small_data, STEPS, MIDDLE, *extra)


@pytest.fixture(scope="module")
def cli(run_cli, overrides) -> Callable[..., str]:
    """`cli(run_dir, *extra, config=SFT)`: the run on 2 ranks through the real CLI; its stderr."""
    return lambda run_dir, *extra, config=SFT: run_cli(config, overrides(run_dir, *extra))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, overrides, run_recipe, monkeypatch_module) -> Path:
    """The reference: the same config in this process (global batch 8 = 2 × 4 accumulations)."""
    run_dir = tmp_path_factory.mktemp("dp_one")
    recipe = run_recipe(SFT, overrides(run_dir))
    assert recipe.parallel.world_size == 1 and recipe.step_scheduler.grad_acc_steps == 4
    return run_dir


@pytest.fixture(scope="module")
def one_process_fused(tmp_path_factory, overrides, run_recipe, monkeypatch_module) -> Path:
    """The reference of the fused-loss layouts: the same config and loss in this process."""
    run_dir = tmp_path_factory.mktemp("dp_one_fused")
    recipe = run_recipe(SFT, overrides(run_dir, *FUSED))
    assert type(recipe.model).__name__ == "FusedLossModel" and recipe.parallel.world_size == 1
    return run_dir


LAYOUTS = {  # 2-rank layouts of the same run
    "fsdp2": ["--+distributed.strategy=fsdp2"],
    "ddp": ["--+distributed.strategy=ddp"],
    "tp_sp": ["--+distributed.tp_size=2", "--+distributed.sequence_parallel=true"],
    "fused_fsdp2": ["--+distributed.strategy=fsdp2", *FUSED],
    # the head sharded over the vocabulary: each rank's share of every chunk's logits
    "fused_tp": ["--+distributed.tp_size=2", *FUSED],
    "fused_tp_sp": ["--+distributed.tp_size=2", "--+distributed.sequence_parallel=true", *FUSED],
}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, overrides, pooled_layouts) -> Callable[[str], tuple[Path, str]]:
    """`two_ranks(layout)`: (run dir, stderr) of the example on 2 ranks, all in one launch."""
    layouts = {name: (2, extra) for name, extra in LAYOUTS.items()}
    return pooled_layouts(tmp_path_factory, "dp", SFT, layouts, overrides)


@pytest.fixture(scope="module")
def same_training(assert_same_training) -> Callable[..., None]:
    """`same_training(ours, reference, steps, weight_atol=2e-5)` (validation every MIDDLE)."""
    return lambda ours, reference, steps, weight_atol=2e-5: assert_same_training(
        ours, reference, steps, MIDDLE, weight_atol
    )


@pytest.mark.parametrize("strategy", ["fsdp2", "ddp"])
def test_two_ranks_match_one_process(strategy, two_ranks, one_process, jsonl_rows, same_training):
    """2 ranks × local 2 × 2 accumulations sees the same 8 samples per step as 1 × 2 × 4."""
    run_dir, stderr = two_ranks(strategy)
    assert f"data parallel: {strategy} over 2 process(es)" in stderr
    # DDP all-reduces once per step (no_sync on the first of the 2 micro-batches); FSDP2 does
    # not by default (it would keep unsharded gradients between micro-batches)
    assert ("gradients reduced once per step" in stderr) == (strategy == "ddp")
    assert stderr.count("train step 1 |") == 1  # rank 0 alone logs
    assert stderr.count(f"run summary ({run_dir}):") == 1  # and ends with the summary
    same_training(run_dir, one_process, range(1, STEPS + 1))
    timing = jsonl_rows(run_dir / "training.jsonl", drop_timing=False)
    assert all(r["tps_per_gpu"] == pytest.approx(r["tps"] / 2) for r in timing)
    if strategy == "fsdp2":
        from transformers import AutoModelForCausalLM

        weights = load_file(run_dir / WEIGHTS)
        model_dir = run_dir / WEIGHTS.rsplit("/", 1)[0]
        loaded, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
        assert not any(info.values()), info
        loaded_state = loaded.state_dict()
        for name, tensor in weights.items():
            assert torch.equal(loaded_state[name], tensor), name


def test_fused_loss_in_one_process_matches_the_masked_loss(
    one_process_fused, one_process, jsonl_rows
):
    """Same losses without ever building [tokens, vocab] logits (chunks sum in another order)."""
    for name in ("training.jsonl", "validation.jsonl"):
        rows, reference = jsonl_rows(one_process_fused / name), jsonl_rows(one_process / name)
        assert [r["step"] for r in rows] == [r["step"] for r in reference]
        for a, b in zip(rows, reference, strict=True):
            assert a["num_label_tokens"] == b["num_label_tokens"]
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (name, a["step"])


def test_fused_loss_on_two_fsdp2_ranks_matches_one_process(
    two_ranks, one_process_fused, one_process, same_training
):
    """The fused loss runs inside the parallelized forward: FSDP2 gathers and reduces the root's
    parameters (embedding = tied head, final norm). (DDP passed by hand too: +14 s a launch.)"""
    strategy = "fsdp2"
    run_dir, stderr = two_ranks(f"fused_{strategy}")
    assert f"data parallel: {strategy} over 2 process(es)" in stderr
    same_training(run_dir, one_process_fused, range(1, STEPS + 1))
    # the checkpoint keeps the Hugging Face names: the wrapper is not part of it
    assert load_file(run_dir / WEIGHTS).keys() == load_file(one_process / WEIGHTS).keys()


@pytest.mark.parametrize("layout", ["fused_tp", "fused_tp_sp"])
def test_fused_loss_over_a_vocabulary_sharded_head_matches_one_process(
    layout, two_ranks, one_process_fused, same_training
):
    """tp 2 (with and without sequence parallel): each rank computes its half of every
    chunk's logits, the cross-entropy joins them; the one-process fused run's training."""
    run_dir, stderr = two_ranks(layout)
    assert "tensor parallel 2" in stderr
    same_training(run_dir, one_process_fused, range(1, STEPS + 1), 1e-4)  # as tp_sp's below


def test_tensor_and_sequence_parallel_match_one_process(two_ranks, one_process, same_training):
    """tp_size 2 (+ sequence parallel) under FSDP2 on a 1 × 2 mesh: both ranks read the same data."""
    run_dir, stderr = two_ranks("tp_sp")
    assert "(rank 0 of 1) on cpu, tensor parallel 2 + sequence parallel" in stderr
    # Row-parallel layers sum partial products in another order; after 6 Adam steps that
    # leaves single elements (near-zero gradients) up to ~5e-5 off, so atol 1e-4 here.
    same_training(run_dir, one_process, range(1, STEPS + 1), 1e-4)


@pytest.mark.parametrize("strategy", ["fsdp2", "ddp", "tp_sp"])
def test_two_rank_checkpoint_resumes_on_one_process(
    strategy,
    two_ranks,
    one_process,
    overrides,
    run_recipe,
    same_training,
    resume_dir_from,
    tmp_path,
):
    """2 -> 1: the sharded optimizer reshards (DCP) and the data continues at step 4's samples."""
    source, _ = two_ranks(strategy)
    resume_dir_from(source, tmp_path, MIDDLE)
    recipe = run_recipe(SFT, overrides(tmp_path, "--+checkpoint.restore_from=latest"))
    assert recipe.parallel.world_size == 1 and recipe.step_scheduler.grad_acc_steps == 4
    weight_atol = 1e-4 if strategy == "tp_sp" else 2e-5  # see the tensor-parallel test
    same_training(tmp_path, one_process, range(MIDDLE + 1, STEPS + 1), weight_atol)


def test_one_process_checkpoint_resumes_on_two_fsdp2_ranks(
    one_process, cli, same_training, resume_dir_from, tmp_path
):
    """1 -> 2: each rank takes its half of the remaining global batches, the optimizer shards."""
    resume_dir_from(one_process, tmp_path, MIDDLE)
    stderr = cli(tmp_path, "--+checkpoint.restore_from=latest")
    assert f"at step {MIDDLE} (saved by 1 process(es), now 2)" in stderr
    same_training(tmp_path, one_process, range(MIDDLE + 1, STEPS + 1))


def test_validate_checks_context_parallel_sizes(monkeypatch, monkeypatch_module, capsys):
    monkeypatch.setenv("WORLD_SIZE", "4")  # as under torchrun: the sizes fit
    argv = ["--validate-only", "-c", str(SFT), "--+distributed.cp_size=2"]
    assert main(argv) == 0
    assert main([*argv, "--+distributed.pp_size=2"]) == 0  # pp 2 × cp 2 on 4 processes
    assert main([*argv, "--+distributed.pp_size=4"]) == 2
    assert "pp_size 4 × cp_size 2 × tp_size 1 = 8 does not divide" in capsys.readouterr().err


def test_strategy_and_sizes_checked_against_the_world_size(monkeypatch_module):
    cfg = load_config(SFT, [])
    assert read_distributed(cfg, world_size=1)[0].strategy == "none"
    section, dp_size = read_distributed(cfg, world_size=4)
    assert (section.strategy, dp_size) == ("fsdp2", 4)
    with pytest.raises(ConfigError, match="strategy none cannot train on 2 processes"):
        read_distributed(load_config(SFT, ["--+distributed.strategy=none"]), world_size=2)
    with pytest.raises(ConfigError, match=r"dp_size 3 .* world size is 2"):
        read_distributed(load_config(SFT, ["--+distributed.dp_size=3"]), world_size=2)
    with pytest.raises(ConfigError, match="tensor parallelism composes with strategy fsdp2 only"):
        bad = ["--+distributed.strategy=ddp", "--+distributed.tp_size=2"]
        read_distributed(load_config(SFT, bad), world_size=2)
    with pytest.raises(ConfigError, match="sequence parallelism needs tp_size > 1"):
        read_distributed(load_config(SFT, ["--+distributed.sequence_parallel=true"]), 2)
    section, dp_size = read_distributed(load_config(SFT, ["--+distributed.tp_size=2"]), 4)
    assert dp_size == 2  # 4 processes = dp 2 × tp 2
    with pytest.raises(ConfigError, match=r"replication \(HSDP\) needs strategy fsdp2"):
        bad = ["--+distributed.strategy=ddp", "--+distributed.dp_replicate_size=2"]
        read_distributed(load_config(SFT, bad), world_size=2)


def test_lora_on_two_fsdp2_ranks_saves_the_adapter_and_a_merged_model(cli, tmp_path):
    """LoRA + FSDP2: adapter-only checkpoint, merged export gathered from shards by rank 0."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cli(tmp_path, config=LORA)
    adapter_dir = tmp_path / f"checkpoints/epoch_0_step_{STEPS}/model"
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    assert not (adapter_dir / "model.safetensors").exists()
    ids = torch.randint(4, 32, (2, 12), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(
        REPO / "examples/llm_finetune/assets/tiny_llama_base"
    )
    with torch.no_grad():
        via_peft = PeftModel.from_pretrained(base, adapter_dir).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged_model").eval()(ids).logits
    torch.testing.assert_close(merged, via_peft, rtol=1e-5, atol=1e-5)
