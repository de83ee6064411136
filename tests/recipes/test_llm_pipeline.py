"""Pipeline-parallel finetune.llm (`distributed.pp_size`): stages on CPU ranks train as one process."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _shared import LORA, SFT
from safetensors.torch import load_file

from automodel.core.config import ConfigError, load_config
from automodel.recipes import read_distributed
from automodel.recipes.llm._pipeline import check_pipeline, step_length

NOT_MERGED = ["--checkpoint.save_merged_model=false"]  # a stage cannot merge the whole model
STEPS, MIDDLE = 6, 3
UNTIED = ["--+model.tie_word_embeddings=false"]
PP = ["--+distributed.pp_size=2"]
FOUR_LAYERS = ["--+model.num_hidden_layers=4"]  # 2 stages per rank of one layer each
INTERLEAVED = [*PP, "--+distributed.pp_schedule=interleaved_1f1b", *FOUR_LAYERS]
GPIPE = [*PP, "--+distributed.pp_schedule=gpipe"]
# each step padded to its longest batch over all ranks (the pipelines of both dp ranks agree)
STEP_LENGTHS = ["--~dataset.seq_length", "--+dataloader.pad_to_multiple_of=2"]
# rows of several documents: each stage gets their position_ids and keeps attention within each
PACKED = ["--+packed_sequence.packed_sequence_size=64"]  # fixed-length rows; epochs pass
PADDING_FREE = [*STEP_LENGTHS, "--+dataloader.padding_free=true"]  # a row per micro-batch
CP = ["--+distributed.cp_size=2"]
FUSED = "--loss_fn._target_=automodel.core.losses.FusedLinearCrossEntropy"
LAYOUTS = {  # (processes, overrides): global batch 8 = local 2 × 4 micro-batches × dp 1, or
    # the example's tied LM head: the last stage's copy of the embedding, gradients summed
    "1f1b": (2, PP),
    "gpipe_dp2": (4, GPIPE),  # 2 × 2 × dp 2
    "gpipe_dp2_step_lengths": (4, [*GPIPE, *STEP_LENGTHS]),
    "1f1b_untied": (2, [*PP, *UNTIED]),
    "interleaved": (2, INTERLEAVED),  # rank 0: stages 0 and 2, rank 1: 1 and 3 (tied head)
    "1f1b_packed": (2, [*PP, *PACKED]),
    # the last stage's loss from its hidden states and LM head (no whole logits)
    "1f1b_fused": (2, [*PP, FUSED]),
    "gpipe_dp2_padding_free": (4, [*GPIPE, *PADDING_FREE]),
    "1f1b_tp2": (4, [*PP, "--+distributed.tp_size=2"]),  # each stage's layers over 2 ranks
    # the fused loss over the last stage's head, sharded over the vocabulary by tp
    "1f1b_tp2_fused": (4, [*PP, "--+distributed.tp_size=2", FUSED]),
    # each stage on half of every row (cp 2); the step's own length rounded up to a multiple
    # of 4 (2 × cp)
    "1f1b_cp2": (4, [*PP, *CP]),
    "1f1b_cp2_step_lengths": (4, [*PP, *CP, *STEP_LENGTHS]),
    "1f1b_cp2_packed": (4, [*PP, *CP, *PACKED]),  # documents apart across the cp ranks too
}


@pytest.fixture(scope="module")
def overrides(short_run, small_data) -> Callable[..., list[str]]:
    """`overrides(run_dir, *extra)`: 6 steps of global batch 8 (local 2), validation and a
    checkpoint at steps 3 and 6."""
    return lambda run_dir, *extra: short_run(run_dir, small_data, STEPS, MIDDLE, *extra)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, overrides, run_recipe, monkeypatch_module) -> Path:
    """The reference: the example (tied LM head) in this process, 4 micro-batches per step."""
    run_dir = tmp_path_factory.mktemp("pp_one")
    recipe = run_recipe(SFT, overrides(run_dir))
    assert recipe.pipeline is None and recipe.step_scheduler.grad_acc_steps == 4
    return run_dir


@pytest.fixture(scope="module")
def one_process_untied(tmp_path_factory, overrides, run_recipe, monkeypatch_module) -> Path:
    run_dir = tmp_path_factory.mktemp("pp_one_untied")
    run_recipe(SFT, overrides(run_dir, *UNTIED))
    return run_dir


@pytest.fixture(scope="module")
def one_process_four_layers(tmp_path_factory, overrides, run_recipe, monkeypatch_module) -> Path:
    run_dir = tmp_path_factory.mktemp("pp_one_four")
    run_recipe(SFT, overrides(run_dir, *FOUR_LAYERS))
    return run_dir


@pytest.fixture(scope="module")
def one_process_documents(tmp_path_factory, overrides, run_recipe, monkeypatch_module):
    """`reference(layout)`: the one-process run of a layout's rows of several documents."""
    runs: dict[str, Path] = {}

    def reference(layout: str) -> Path:
        if layout not in runs:
            runs[layout] = tmp_path_factory.mktemp(f"pp_one_{layout}")
            extra = PACKED if layout.endswith("packed") else PADDING_FREE
            run_recipe(SFT, overrides(runs[layout], *extra))
        return runs[layout]

    return reference


@pytest.fixture(scope="module")
def launched(tmp_path_factory, overrides, pooled_layouts):
    """`launched(layout)`: (run dir, stderr) of LAYOUTS, one torchrun launch per process count."""
    return pooled_layouts(tmp_path_factory, "pp", SFT, LAYOUTS, overrides)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_pipeline_matches_one_process(
    layout, launched, one_process, one_process_untied, one_process_four_layers,
    one_process_documents, assert_same_training,
):  # fmt: skip
    """Per-step losses, grad norms (over every stage, a tied embedding counted once),
    validation and the final weights, which rank 0 merges from the stages into one Hugging
    Face file; interleaved, each rank runs two stages of the four; with step lengths, the
    micro-batches of each step are padded to its own length (no dataset.seq_length); packed
    rows and padding-free rows keep each document's attention to itself in every stage; with
    tp 2, each stage's layers are split over two ranks (the model's tensor-parallel plan); with
    cp 2, each stage runs on half of every row and attends over both halves; with the fused
    loss, the last stage computes it from the LM head (the reference: cross-entropy on logits)."""
    run_dir, stderr = launched(layout)
    if layout == "interleaved":
        for stage in (0, 2):  # rank 0's (the log is rank 0's)
            assert f"stage {stage} of 4 holds layers {stage}-{stage} (interleaved_1f1b" in stderr
        assert_same_training(run_dir, one_process_four_layers, range(1, STEPS + 1), MIDDLE)
        return
    schedule = "gpipe" if "gpipe" in layout else "1f1b"
    assert f"stage 0 of 2 holds layers 0-0 ({schedule} schedule" in stderr
    padded = "longest batch over all ranks, rounded up to a multiple of "
    padded += "4" if "cp2" in layout else "2"
    assert ("context parallel 2" in stderr) == ("cp2" in layout)
    fused = "the last stage computes the fused loss from its LM head"
    assert (fused in stderr) == layout.endswith("fused")
    tp = "tp2" in layout
    assert (padded in stderr) == layout.endswith(("step_lengths", "padding_free"))
    if layout.endswith(("packed", "padding_free")):
        assert ("packing efficiency" in stderr) == layout.endswith("packed")
        reference = one_process_documents(layout)
    else:
        reference = one_process_untied if "untied" in layout else one_process
    # tp sums each row of a layer's matmuls in two parts: Adam turns that rounding into ~3e-5
    # on near-zero gradients (losses and grad norms match every step all the same)
    atol = 5e-5 if tp else 2e-5
    assert_same_training(run_dir, reference, range(1, STEPS + 1), MIDDLE, weight_atol=atol)


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, overrides, run_recipe, run_cli) -> tuple[Path, Path]:
    """(one process, 2 stages) of the LoRA example, without the merged model at the end."""
    one = tmp_path_factory.mktemp("pp_lora_one")
    run_recipe(LORA, overrides(one, *NOT_MERGED))
    piped = tmp_path_factory.mktemp("pp_lora")
    run_cli(LORA, overrides(piped, *PP, *NOT_MERGED))
    return one, piped


def test_lora_adapters_train_in_stages_as_in_one_process(lora_runs, assert_same_training):
    """Each stage's adapters (base weights and the tied embedding frozen) train as in one
    process; rank 0 merges the stages' adapters into one PEFT folder."""
    one, piped = lora_runs
    adapter = "adapter_model.safetensors"
    assert_same_training(piped, one, range(1, STEPS + 1), MIDDLE, weights=adapter)
    model_dir = f"checkpoints/epoch_0_step_{STEPS}/model"
    config = json.loads((piped / model_dir / "adapter_config.json").read_text())
    assert config == json.loads((one / model_dir / "adapter_config.json").read_text())
    assert not (piped / model_dir / "config.json").exists()


def test_lora_pipeline_checkpoint_resumes_on_one_process(
    lora_runs, overrides, run_recipe, assert_same_training, resume_dir_from, tmp_path
):
    one, piped = lora_runs
    resume_dir_from(piped, tmp_path, MIDDLE)
    run_recipe(LORA, overrides(tmp_path, *NOT_MERGED, "--+checkpoint.restore_from=latest"))
    adapter = "adapter_model.safetensors"
    assert_same_training(tmp_path, one, range(MIDDLE + 1, STEPS + 1), MIDDLE, weights=adapter)


@pytest.mark.parametrize(("layout", "tied"), [("1f1b", True), ("1f1b_untied", False)])
def test_the_merged_checkpoint_loads_in_plain_transformers(launched, layout, tied):
    """Tied: the embedding once, as a one-process save writes it; untied: both stages' ends."""
    from transformers import AutoModelForCausalLM

    run_dir, _ = launched(layout)
    model_dir = run_dir / f"checkpoints/epoch_0_step_{STEPS}/model"
    loaded, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    assert not any(info.values()), info
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    weights = load_file(model_dir / "model.safetensors")
    assert "model.embed_tokens.weight" in weights
    assert ("lm_head.weight" in weights) != tied
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, weights.get(name, loaded.model.embed_tokens.weight)), name


def test_pipeline_checkpoint_resumes_on_one_process(
    launched, one_process, overrides, run_recipe, assert_same_training, resume_dir_from, tmp_path
):
    """2 stages -> 1 process: the stages' optimizer parts (the tied embedding's state saved by
    both) load as one optimizer."""
    source, _ = launched("1f1b")
    resume_dir_from(source, tmp_path, MIDDLE)
    recipe = run_recipe(SFT, overrides(tmp_path, "--+checkpoint.restore_from=latest"))
    assert recipe.pipeline is None and recipe.step_scheduler.step == STEPS
    assert_same_training(tmp_path, one_process, range(MIDDLE + 1, STEPS + 1), MIDDLE)


def test_one_process_checkpoint_resumes_as_a_pipeline(
    one_process, overrides, run_cli, assert_same_training, resume_dir_from, tmp_path
):
    """1 process -> 2 stages: each stage restores its part of the optimizer (both ends the
    tied embedding's state)."""
    resume_dir_from(one_process, tmp_path, MIDDLE)
    stderr = run_cli(SFT, overrides(tmp_path, *PP, "--+checkpoint.restore_from=latest"))
    assert f"at step {MIDDLE} (saved by 1 process(es), now 2)" in stderr
    assert_same_training(tmp_path, one_process, range(MIDDLE + 1, STEPS + 1), MIDDLE)


@pytest.mark.parametrize(
    ("extra", "world_size", "message"),
    [
        (["--+distributed.strategy=ddp"], 2, "composes with strategy fsdp2 only, not ddp"),
        (
            ["--+distributed.tp_size=2", "--+distributed.sequence_parallel=true"],
            4,
            "sequence parallelism with pp_size > 1 is not supported yet",
        ),
        (
            ["--+distributed.pp_schedule=zb"],
            2,
            "1f1b, gpipe, interleaved_1f1b, looped_bfs, got 'zb'",
        ),
        (["--+distributed.pp_stage_rounding=sideways"], 2, "expected up, down or null"),
    ],
)
def test_unsupported_pipeline_settings_are_config_errors(
    extra, world_size, message, monkeypatch_module
):
    cfg = load_config(SFT, [*PP, *extra])
    with pytest.raises(ConfigError, match=message):  # what finetune.check runs, in order
        section, _ = read_distributed(cfg, world_size=world_size)
        check_pipeline(cfg, section)


def test_a_step_is_padded_to_its_longest_batch_rounded_up() -> None:
    batches = [{"input_ids": torch.zeros(2, n, dtype=torch.long)} for n in (5, 9, 0)]
    assert [step_length(batches, m) for m in (1, 2, 4, 16)] == [9, 10, 12, 16]
    assert step_length([{"input_ids": torch.zeros(2, 0, dtype=torch.long)}]) == 1


def test_merging_lora_at_the_end_of_a_pipeline_run_is_a_config_error(monkeypatch_module):
    cfg = load_config(LORA, PP)
    section, _ = read_distributed(cfg, world_size=2)
    with pytest.raises(ConfigError, match="the merged model needs the whole model") as caught:
        check_pipeline(cfg, section)
    assert caught.value.problems[0].key == "checkpoint.save_merged_model"
    check_pipeline(load_config(LORA, [*PP, *NOT_MERGED]), section)
