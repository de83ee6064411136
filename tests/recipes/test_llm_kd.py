"""kd.llm: distillation of a frozen teacher into a student on the tiny offline assets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from _shared import REPO
from safetensors.torch import load_file

from automodel.core.config import ConfigError, load_config
from automodel.core.config._nemo_compat import translate
from automodel.recipes._kd_teacher import RankSplit, read_rank_split
from automodel.recipes.llm.kd import KDRecipeForCausalLM, main

KD = REPO / "examples/llm_kd/tiny_kd.yaml"
TEACHER = REPO / "examples/llm_kd/assets/tiny_teacher/model.safetensors"
STEPS, EVERY = 4, 2  # checkpoints (and validation) at steps 2 and 4
T2 = "--kd.temperature=2.0"  # T^2 = 4 weighs the KL: a different loss from kd_ratio 0's
# docs/kd_recipe.md's layout: the teacher on processes 2 and 3 (tp 2), the student on 0 and 1
TEACHER_RANKS = "--+teacher_distributed={dp_size: 1, tp_size: 2}"


@pytest.fixture(scope="module")
def overrides(short_run, small_data) -> Callable[..., list[str]]:
    """`overrides(run_dir, *extra)`: 4 steps of global batch 8 (local 2) on 64 training rows."""
    return lambda run_dir, *extra: short_run(run_dir, small_data, STEPS, EVERY, *extra)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, overrides, monkeypatch_module) -> tuple[KDRecipeForCausalLM, Path]:
    """The example's distillation (kd_ratio 0.5, T 2) in this process: the run others match."""
    run_dir = tmp_path_factory.mktemp("kd_one")
    recipe = KDRecipeForCausalLM(load_config(KD, overrides(run_dir, T2)))
    recipe.setup()
    recipe.run_train_validation_loop()  # the recipe is kept: its teacher and optimizer
    return recipe, run_dir


def test_kd_ratio_0_trains_exactly_as_finetune(
    tmp_path, overrides, run_recipe, jsonl_rows, monkeypatch_module, capsys
):
    """Same student, data and seed: kd_ratio 0 is finetune.llm's cross-entropy, step for step
    (the teacher offloaded to the CPU between its forwards changes nothing)."""
    run_recipe(KD, overrides(tmp_path / "ft"))  # finetune.llm reads the example's student
    extra = ("--kd.kd_ratio=0", "--kd.offload_teacher=true")
    assert main(["-c", str(KD), *overrides(tmp_path / "kd", *extra)]) == 0
    assert f"run summary ({tmp_path / 'kd'}):" in capsys.readouterr().err  # every recipe ends so
    for log in ("training.jsonl", "validation.jsonl"):
        finetune, kd = (jsonl_rows(tmp_path / run / log) for run in ("ft", "kd"))
        assert [r["step"] for r in kd] == [r["step"] for r in finetune]
        for a, b in zip(kd, finetune, strict=True):
            assert a["num_label_tokens"] == b["num_label_tokens"]
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7), (log, a["step"])


def test_gradients_reach_the_student_only(reference, jsonl_rows):
    recipe, run_dir = reference
    teacher = recipe.teacher.causal_lm
    trained = {id(p) for group in recipe.optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in recipe.unwrapped.parameters()}
    assert not trained & {id(p) for p in teacher.parameters()}
    assert not teacher.training
    for name, param in teacher.named_parameters():
        assert param.grad is None and not param.requires_grad, name
    weights = teacher.state_dict()
    for name, tensor in load_file(TEACHER).items():  # as built: unchanged by training
        assert torch.equal(weights[name], tensor), name
    saved = load_file(run_dir / f"checkpoints/epoch_0_step_{STEPS}/model/model.safetensors")
    student = recipe.unwrapped.state_dict()
    assert saved.keys() == {k for k in student if k != "lm_head.weight"}  # tied to the embeddings
    assert saved["model.embed_tokens.weight"].shape == (64, 32)  # the student's, not the teacher's
    for row in jsonl_rows(run_dir / "training.jsonl"):  # the loss and its logged parts
        kd = 0.5 * row["ce_loss"] + 0.5 * 2.0**2 * row["kl_loss"]
        assert row["loss"] == pytest.approx(kd, rel=1e-5) and row["kl_loss"] > 0


def test_resume_is_bitwise_identical(reference, overrides, jsonl_rows, resume_dir_from, tmp_path):
    """Stopped after step 2 and resumed: the same losses, CE and KL parts and final student."""
    _, run_dir = reference
    resume_dir_from(run_dir, tmp_path, EVERY)
    assert main(["-c", str(KD), *overrides(tmp_path, T2)]) == 0
    for log in ("training.jsonl", "validation.jsonl"):
        assert jsonl_rows(tmp_path / log) == jsonl_rows(run_dir / log)
    final = f"checkpoints/epoch_0_step_{STEPS}/model/model.safetensors"
    resumed, uninterrupted = load_file(tmp_path / final), load_file(run_dir / final)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_a_lora_student_trains_its_adapters_and_saves_a_peft_adapter(
    tmp_path, overrides, monkeypatch_module
):
    """`peft:` on the student: only its adapters train; the checkpoint is the student's adapter
    (adapter_config.json, no config.json) and the merged student is a plain HF model."""
    lora = "{_target_: automodel.peft.LoraConfig, match_all_linear: true, dim: 4, alpha: 8}"
    extra = (f"--+peft={lora}", "--+checkpoint.save_merged_model=true", T2)
    recipe = KDRecipeForCausalLM(load_config(KD, overrides(tmp_path, *extra)))
    recipe.setup()
    before = {n: p.detach().clone() for n, p in recipe.unwrapped.named_parameters()}
    recipe.run_train_validation_loop()
    trained = {n for n, p in recipe.unwrapped.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n for n in trained)
    for name, param in recipe.unwrapped.named_parameters():
        assert torch.equal(param, before[name]) != (name in trained), name  # adapters only
    adapter = tmp_path / f"checkpoints/epoch_0_step_{STEPS}/model"
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()
    assert all(".lora_" in k for k in load_file(adapter / "adapter_model.safetensors"))
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged_model")
    assert merged.config.hidden_size == 32  # the student, not the teacher


def test_a_teacher_with_another_vocabulary_is_exit_2_before_any_weights_load(
    tmp_path, monkeypatch, capsys
):
    def no_weights(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.chdir(REPO)
    for name in ("from_pretrained", "from_config"):
        monkeypatch.setattr(transformers.AutoModelForCausalLM, name, no_weights)
    argv = ["-c", str(KD), "--+model.vocab_size=80", f"--logging.run_dir={tmp_path}"]
    assert main(argv) == 2
    assert main([*argv, "--validate-only"]) == 2  # what `automodel validate kd llm` runs
    err = capsys.readouterr().err
    assert "teacher's vocab_size 64 differs from the student's (model:) 80" in err
    assert "Traceback" not in err and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--kd.kd_ratio=1.5", "kd_ratio must be in [0, 1], got 1.5"),
        ("--kd.temperature=0", "temperature must be a finite number > 0, got 0"),
    ],
)
def test_the_kd_section_is_checked(override, message, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(["-c", str(KD), override, "--validate-only"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("key", ["pp_size", "tp_size"])
def test_model_parallel_layouts_are_refused(key, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun --nproc-per-node 2 sets
    assert main(["-c", str(KD), f"--+distributed.{key}=2", "--validate-only"]) == 2
    assert f"{key} > 1 is not supported yet for kd.llm" in capsys.readouterr().err


def test_two_fsdp2_ranks_train_as_one_process(
    reference, overrides, run_cli, assert_same_training, tmp_path
):
    """One torchrun launch: 2 ranks (the teacher FSDP2-sharded too) match the 1-process run."""
    _, run_dir = reference
    run_cli(KD, overrides(tmp_path, T2, "--+distributed.strategy=fsdp2"), recipe=("kd", "llm"))
    assert_same_training(tmp_path, run_dir, range(1, STEPS + 1), EVERY)


def test_context_parallel_ranks_train_as_one_process(
    reference, overrides, run_cli, assert_same_training, tmp_path
):
    """cp 2 on 2 ranks: student and teacher each attend over both halves of every row, the
    KL and CE on each rank's half; the same run as one process (their *_cp2 layouts, with the
    teacher beside the student)."""
    _, run_dir = reference
    stderr = run_cli(KD, overrides(tmp_path, T2, "--+distributed.cp_size=2"), recipe=("kd", "llm"))
    assert "context parallel 2" in stderr
    assert_same_training(tmp_path, run_dir, range(1, STEPS + 1), EVERY)


def test_the_teacher_takes_the_last_processes_and_serves_the_students_in_turn(monkeypatch_module):
    """`teacher_distributed:` takes its dp_size x tp_size processes, the last ones; teacher
    replica r (tp rank 0 talks) serves the student's dp ranks r, r + teacher dp, ..."""
    split = RankSplit(range(4), range(4, 8), teacher_tp=2)  # student dp 4; teacher dp 2 x tp 2
    assert [split.teacher_of(rank) for rank in range(4)] == [4, 6, 4, 6]
    assert list(split.students_of(4)) == list(split.students_of(5)) == [0, 2]
    assert list(split.students_of(6)) == list(split.students_of(7)) == [1, 3]
    cfg = load_config(KD, [TEACHER_RANKS])
    assert read_rank_split(cfg, world_size=4) == RankSplit(range(2), range(2, 4), 2)
    assert read_rank_split(cfg, world_size=5) == RankSplit(range(3), range(3, 5), 2)
    assert read_rank_split(load_config(KD), world_size=4) is None  # beside the student


@pytest.mark.parametrize(
    ("world", "overrides", "message"),
    [
        (4, ["--+teacher_distributed={dp_size: 1, pp_size: 2}"], "a teacher in pipeline stages"),
        (4, ["--+teacher_distributed={tp_size: 2}"], "set dp_size to a number of processes"),
        (
            4,
            ["--+teacher_distributed.dp_size=4"],
            "= 4 processes and the student: 1+ need 5, but 4",
        ),
        (5, [TEACHER_RANKS, "--+distributed.dp_size=2"], "distributed: 2 need 4, but 5 were"),
        (
            5,
            ["--+teacher_distributed.dp_size=2"],
            "dp_size 2 does not divide the student's dp size 3",
        ),
        (
            4,
            [TEACHER_RANKS, "--kd.offload_teacher=true"],
            "(teacher_distributed:) is not offloaded",
        ),
        (
            4,
            [TEACHER_RANKS, "--+distributed.cp_size=2"],
            "a student with cp_size > 1 and a teacher on processes of its own",
        ),
    ],
)
def test_teacher_layouts_that_cannot_run_are_exit_2(world, overrides, message, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WORLD_SIZE", str(world))  # what torchrun --nproc-per-node sets
    assert main(["-c", str(KD), *overrides, "--validate-only"]) == 2
    assert message in capsys.readouterr().err


def test_their_separate_meshes_translate_to_teacher_distributed():
    """Their `separate_meshes: true` KD layouts (llama3_2_1b_kd_separate_mesh_teacher_*.yaml):
    the teacher's tensor parallelism is ours as is; a teacher in pipeline stages or context
    parallelism, and `separate_meshes` without the teacher's section, are refused by key."""
    teacher = {"strategy": "fsdp2", "dp_size": 1, "tp_size": 2, "cp_size": 1, "pp_size": 1}
    data = {
        "recipe": "KnowledgeDistillationRecipeForNextTokenPrediction",
        "separate_meshes": True,
        "distributed": {"strategy": "fsdp2", "dp_size": 2},
        "teacher_distributed": {**teacher, "sequence_parallel": False},
    }
    ours = translate(data, {}, "cfg.yaml", 4).data
    assert ours["teacher_distributed"] == {**teacher, "sequence_parallel": False}
    assert "separate_meshes" not in ours
    cfg = load_config(KD, [f"--+teacher_distributed={ours['teacher_distributed']}"])
    assert read_rank_split(cfg, world_size=4) == RankSplit(range(2), range(2, 4), 2)
    layout = {**teacher, "tp_size": 1, "pp_size": 2, "pipeline": {"pp_schedule": "1f1b"}}
    with pytest.raises(ConfigError) as info:
        translate({**data, "teacher_distributed": layout}, {}, "cfg.yaml", 4)
    assert [p.key for p in info.value.problems] == ["teacher_distributed.pp_size"]
    cp = translate(
        {**data, "teacher_distributed": {**teacher, "tp_size": 1, "cp_size": 2}}, {}, "x", 4
    )
    cfg = load_config(KD, [f"--+teacher_distributed={cp.data['teacher_distributed']}"])
    assert read_rank_split(cfg, world_size=4) == RankSplit(range(2), range(2, 4), 1, 2)
    with pytest.raises(ConfigError) as info:
        translate({k: v for k, v in data.items() if k != "teacher_distributed"}, {}, "x", 4)
    assert [p.key for p in info.value.problems] == ["separate_meshes"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "teacher",
    [TEACHER_RANKS, "--+teacher_distributed={dp_size: 1, cp_size: 2}"],
    ids=["teacher_tp2", "teacher_cp2"],
)
def test_a_teacher_on_processes_of_its_own_trains_as_one_process(
    teacher, reference, overrides, run_cli, assert_same_training, tmp_path
):
    """One torchrun launch of 4 processes: the student FSDP2 on 0 and 1, the teacher on 2 and
    3 serving both, tensor parallel or (their *_teacher_cp2 layout) each on half of every row,
    its hidden states gathered into whole rows: the same training as the 1-process run with
    the teacher beside the student (float rounding aside: the teacher sums in another order)."""
    _, run_dir = reference
    extra = (T2, "--+distributed.strategy=fsdp2", teacher)
    err = run_cli(KD, overrides(tmp_path, *extra), nproc=4, recipe=("kd", "llm"))
    assert "data parallel: fsdp2 over 2 process(es) 0-1 of 4" in err
    assert "teacher on processes 2-3" in err
    assert_same_training(tmp_path, run_dir, range(1, STEPS + 1), EVERY)
