"""NeMo AutoModel configs run here unchanged (docs/migrating.md): written in their schema,
pointed at the repo's tiny model and a local SQuAD-format file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _shared import REPO

from automodel.core.config import (
    ConfigError,
    UserError,
    load_config,
    resolve_target,
    validate_config,
)
from automodel.core.config._nemo_compat import migrate, translate
from automodel.recipes.llm.finetune import SECTIONS

ASSETS = REPO / "examples/llm_finetune/assets"
AUTOMODEL = Path(sys.executable).with_name("automodel")

# Their llama3_2_1b_squad.yaml layout and key names, pointed at local files.
THEIRS = """\
recipe:
  _target_: nemo_automodel.recipes.llm.train_ft.TrainFinetuneRecipeForNextTokenPrediction

step_scheduler:
  global_batch_size: 8
  local_batch_size: 4
  ckpt_every_steps: 1000
  val_every_steps: 2
  max_steps: 3
  num_epochs: 1

dist_env:
  backend: nccl
  timeout_minutes: 1

rng:
  _target_: nemo_automodel.components.training.rng.StatefulRNG
  seed: 1111
  ranked: true

model:
  _target_: nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained
  pretrained_model_name_or_path: {assets}/tiny_llama_base

tokenizer:
  _target_: nemo_automodel.NeMoAutoTokenizer.from_pretrained
  pretrained_model_name_or_path: {assets}/tiny_tokenizer

compile:
  enabled: false
  mode: "default"
  fullgraph: false
  dynamic: true
  backend: null

clip_grad_norm:
  max_norm: 1.0

distributed:
  strategy: fsdp2
  dp_size: none
  tp_size: 1
  cp_size: 1

loss_fn:
  _target_: nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy

dataset:
  _target_: nemo_automodel.components.datasets.llm.squad.make_squad_dataset
  dataset_name: {data}/squad_train.jsonl
  split: train

packed_sequence:
  packed_sequence_size: 0

dataloader:
  _target_: torchdata.stateful_dataloader.StatefulDataLoader
  collate_fn:
    _target_: nemo_automodel.components.datasets.utils.default_collater
  shuffle: false

validation_dataset:
  _target_: nemo_automodel.components.datasets.llm.squad.make_squad_dataset
  dataset_name: {data}/squad_val.jsonl
  split: validation
  limit_dataset_samples: 8

validation_dataloader:
  _target_: torchdata.stateful_dataloader.StatefulDataLoader
  collate_fn:
    _target_: nemo_automodel.components.datasets.utils.default_collater

optimizer:
  _target_: torch.optim.Adam
  betas: [0.9, 0.999]
  eps: 1e-8
  lr: 1.0e-3
  weight_decay: 0

lr_scheduler:
  lr_decay_style: cosine
  lr_warmup_steps: 1
  min_lr: 1.0e-6

checkpoint:
  enabled: true
  checkpoint_dir: {data}/run/checkpoints
  model_save_format: safetensors
  save_consolidated: true

ci:
  recipe_owner: someone
  time: "00:10:00"
"""


def squad_rows(name: str, start: int, count: int) -> list[dict]:
    """SQuAD-format rows made from the repo's word-reversal task."""
    rows = (ASSETS / name).read_text().splitlines()[start : start + count]
    out = []
    for line in rows:
        user, answer = (m["content"] for m in json.loads(line)["messages"])
        context = user.split(" ", 1)[1]
        out.append({"context": context, "question": "reverse", "answers": {"text": [answer]}})
    return out


@pytest.fixture(scope="module")
def theirs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nemo")
    for name, rows in (
        ("squad_train.jsonl", squad_rows("reverse_train.jsonl", 0, 32)),
        ("squad_val.jsonl", squad_rows("reverse_validation.jsonl", 0, 16)),
    ):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = root / "theirs.yaml"
    path.write_text(THEIRS.format(assets=ASSETS, data=root))
    return path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_their_command_line_routes_by_recipe(theirs: Path, capsys) -> None:
    """`automodel [validate] cfg.yaml [overrides]`: the recipe comes from `recipe:`."""
    from automodel.cli._app import main

    assert main(["validate", str(theirs), "--step_scheduler.max_steps", "2"]) == 0
    assert f"config OK: {theirs}" in capsys.readouterr().out
    assert main([str(theirs), "--nproc-per-node", "2", "--dry-run"]) == 0
    assert f"-m automodel.cli finetune llm -c {theirs}" in capsys.readouterr().out


def test_overrides_in_their_spelling(theirs: Path) -> None:
    """An override may name their argument even where their file does not spell it out."""
    cfg = load_config(theirs, ["--dataset.limit_dataset_samples", "4"], sections=SECTIONS)
    assert cfg.dataset.split == "train[:4]"
    assert cfg.where("dataset.split") == "command line (--dataset.limit_dataset_samples=4)"


def test_their_squad_config_validates(theirs: Path) -> None:
    cfg = load_config(theirs, sections=SECTIONS)
    validate_config(cfg, SECTIONS)
    assert cfg.model._target_ == "automodel.core.models.AutoModelForCausalLM.from_pretrained"
    assert cfg.validation_dataset.split == "validation[:8]"
    assert cfg.distributed.dp_size == "auto" and cfg.distributed.timeout_minutes == 1
    assert "recipe" not in cfg and "ci" not in cfg and "dist_env" not in cfg
    # a moved key still points at the line the user wrote
    line = THEIRS.splitlines().index("  dataset_name: {data}/squad_train.jsonl") + 1
    assert cfg.where("dataset.path") == f"{theirs}:{line}"
    assert "nemo_automodel" not in sys.modules


def test_their_config_runs_and_migrated_matches_bitwise(
    theirs: Path, tmp_path: Path, run_recipe, jsonl_rows
) -> None:
    migrated = tmp_path / "ours.yaml"
    command = [str(AUTOMODEL), "migrate", str(theirs), "--out", str(migrated)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    text = migrated.read_text()
    assert text == migrate(str(theirs))
    code = [line.split("#")[0] for line in text.splitlines()]
    # no target of theirs is left (`prompt_format: nemo_automodel` names their encoding)
    assert not any("nemo_automodel." in c or c.startswith(("recipe:", "ci:")) for c in code)
    assert "prompt_format: nemo_automodel" in [c.strip() for c in code]
    assert "  # was nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained" in text
    assert "automodel finetune llm" in text
    losses = []
    for name, config in (("theirs", theirs), ("ours", migrated)):
        run_dir = tmp_path / name
        overrides = [f"--logging.run_dir={run_dir}", f"--checkpoint.checkpoint_dir={run_dir}/ck"]
        run_recipe(config, [*overrides, "--+logging.progress=false"])
        train = jsonl_rows(run_dir / "training.jsonl")
        val = jsonl_rows(run_dir / "validation.jsonl")
        assert [r["step"] for r in train] == [1, 2, 3]
        losses.append((train, val))
    assert losses[0] == losses[1]


def test_their_mock_dataset_fine_tunes_on_random_rows(
    theirs: Path, tmp_path: Path, run_recipe, jsonl_rows
) -> None:
    """Their fine-tune config with MockIterableDataset (no validation set): random rows of
    seq_len tokens, each giving seq_len - 1 targets as their shifted labels do; its batch_size
    is their micro-batch (local_batch_size 4), and the `benchmark:` section their llm_benchmark
    fine-tunes carry is dropped (their fine-tune recipe never reads it)."""
    text = theirs.read_text()
    start, end = text.index("dataset:\n  _target_"), text.index("packed_sequence:")
    mock = (
        "dataset:\n"
        "  _target_: nemo_automodel.components.datasets.llm.mock_iterable_dataset.MockIterableDataset\n"
        "  vocab_size: 64\n  seq_len: 24\n  num_samples: 64\n  batch_size: 4\n\n"
        "validation_dataset: none\n\n"
        "benchmark: {warmup_steps: 5, peak_tflops: 989, nsys_start: -1, nsys_end: -1}\n\n"
    )
    cut = text.index("validation_dataset:\n"), text.index("optimizer:")
    text = text[: cut[0]] + text[cut[1] :]
    path = write(tmp_path, text[:start] + mock + text[end:])
    run_dir = tmp_path / "run"
    overrides = [f"--logging.run_dir={run_dir}", f"--checkpoint.checkpoint_dir={run_dir}/ck"]
    recipe = run_recipe(path, [*overrides, "--+logging.progress=false"])
    assert type(recipe.train_set).__name__ == "SyntheticTextRows"
    rows = jsonl_rows(run_dir / "training.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["num_label_tokens"] for r in rows] == [8 * 23] * 3
    assert all(0 < r["loss"] < 10 for r in rows)


def test_unknown_nemo_target_is_a_specific_error(tmp_path: Path) -> None:
    text = THEIRS.replace(
        "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy",
        "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropyy",
    ).format(assets=ASSETS, data=tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), sections=SECTIONS)
    message = str(err.value)
    assert "not in the alias table" in message and "did you mean" in message.lower()
    line = text.splitlines().index("loss_fn:") + 2
    assert f"cfg.yaml:{line}" in message
    with pytest.raises(ConfigError, match="Megatron-FSDP is not supported"):
        resolve_target("nemo_automodel.components.distributed.megatron_fsdp.MegatronFSDPManager")
    ours = resolve_target("nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy")
    assert ours.__module__.startswith("automodel.core.losses")
    assert "nemo_automodel" not in sys.modules


def test_typo_in_their_key_names_gets_a_suggestion(tmp_path: Path) -> None:
    text = THEIRS.replace("  val_every_steps: 2", "  val_check_intervl: 2")
    with pytest.raises(ConfigError, match="did you mean 'val_check_interval'"):
        load_config(write(tmp_path, text.format(assets=ASSETS, data=tmp_path)), sections=SECTIONS)


def test_typo_in_their_argument_names_gets_a_suggestion(tmp_path: Path) -> None:
    text = THEIRS.replace("  limit_dataset_samples: 8", "  limit_dataset_sample: 8")
    with pytest.raises(ConfigError, match="did you mean 'limit_dataset_samples'"):
        load_config(write(tmp_path, text.format(assets=ASSETS, data=tmp_path)), sections=SECTIONS)


def test_older_spellings_and_grad_acc_style() -> None:
    data = {
        "recipe": "TrainFinetuneRecipeForNextTokenPrediction",
        "step_scheduler": {
            "grad_accumulation_steps": 2,
            "val_check_interval": 5,
            "checkpoint_interval": 10,
            "log_interval": 1,
        },
        "dataloader": {"batch_size": 4},
        "restore_from": {"path": "ckpts/epoch_0_step_10"},
        "checkpoint": {"enabled": False},
        "distributed": {"strategy": "ddp", "dp_size": "none"},
    }
    t = translate(data, {}, "cfg.yaml", world_size=2)
    assert t.recipe == "finetune.llm"
    assert t.data["step_scheduler"] == {
        "grad_acc_steps": 2,
        "val_every_steps": 5,
        "ckpt_every_steps": None,  # checkpoint.enabled: false
        "log_every_steps": 1,
        "local_batch_size": 4,
        "global_batch_size": 16,  # 4 x 2 x 2 processes
    }
    assert t.data["checkpoint"] == {"restore_from": "ckpts/epoch_0_step_10", "save_final": False}
    assert t.data["dataloader"] == {}
    for bad, match in (
        ({"distributed": {"strategy": "megatron_fsdp"}}, "use fsdp2"),
        ({"compile": {"backend": "eager"}}, "compile backend 'eager'"),
        ({"recipe": "FinetuneRecipeForVLMX"}, "no equivalent here"),
    ):
        with pytest.raises(ConfigError, match=match):
            translate(bad, {}, "cfg.yaml")


def test_peft_config_keeps_their_defaults() -> None:
    data = {
        "peft": {
            "_target_": "nemo_automodel.components._peft.lora.PeftConfig",
            "include_modules": ["*.q_proj"],
            "dim": 8,
            "use_triton": False,
        }
    }
    peft = translate(data, {}, "cfg.yaml").data["peft"]
    assert peft == {
        "_target_": "automodel.peft.LoraConfig",
        "dim": 8,
        "use_triton": False,
        "target_modules": ["*.q_proj"],
        "alpha": 32,
        "dropout_position": "post",
    }


def test_freeze_and_model_spellings() -> None:
    data = {
        "model": {
            "_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
            "pretrained_model_name_or_path": "x",
            "force_hf": True,
            "use_liger_kernel": False,
        },
        "freeze": {"freeze_embeddings": True, "freeze_vision_tower": False},
        "wandb": {"project": "p", "save_dir": "/tmp/wandb"},
    }
    t = translate(data, {"freeze.freeze_embeddings": "cfg.yaml:9"}, "cfg.yaml")
    assert t.data["model"] == {
        "_target_": "automodel.core.models.AutoModelForCausalLM.from_pretrained",
        "pretrained_model_name_or_path": "x",
    }
    assert t.data["freeze"] == {"embeddings": True, "vision_tower": False}
    assert t.where["freeze.embeddings"] == "cfg.yaml:9"
    assert t.data["wandb"] == {"project": "p", "dir": "/tmp/wandb"}
    audio = translate({"freeze": {"freeze_audio_tower": True}}, {}, "cfg.yaml")
    assert audio.data["freeze"] == {} and any("freeze.patterns" in n for n in audio.notes)


def test_their_vlm_config() -> None:
    """Their VLM recipe's spelling: the image-text model, MedPix rows, their default collate
    function and freeze_config are finetune.vlm's model, image_qa_dataset, VisionChatCollator
    and freeze keys."""
    data = {
        "recipe": "FinetuneRecipeForVLM",
        "model": {
            "_target_": "nemo_automodel.NeMoAutoModelForImageTextToText.from_pretrained",
            "pretrained_model_name_or_path": "some/vlm",
            "backend": {"_target_": "nemo_automodel.components.models.common.BackendConfig"},
        },
        "freeze_config": {
            "freeze_embeddings": True,
            "freeze_vision_tower": True,
            "freeze_language_model": False,
        },
        "dataset": {
            "_target_": "nemo_automodel.components.datasets.vlm.datasets.make_medpix_dataset",
            "path_or_dataset": "mmoukouba/MedPix-VQA",
            "split": "train",
        },
        "dataloader": {
            "_target_": "torchdata.stateful_dataloader.StatefulDataLoader",
            "collate_fn": {
                "_target_": "nemo_automodel.components.datasets.vlm.collate_fns.default_collate_fn",
                "max_length": 2048,
            },
        },
    }
    t = translate(data, {}, "cfg.yaml")
    assert t.recipe == "finetune.vlm"
    assert t.data["model"] == {
        "_target_": "automodel.core.models.AutoModelForImageTextToText.from_pretrained",
        "pretrained_model_name_or_path": "some/vlm",
    }
    assert t.data["freeze"] == {"embeddings": True, "vision_tower": True, "language_model": False}
    assert t.data["dataset"] == {
        "_target_": "automodel.core.data.image_qa_dataset",
        "split": "train",
        "path": "mmoukouba/MedPix-VQA",
        "image_column": "image_id",
    }
    assert t.data["dataloader"] == {"shuffle": False, "drop_last": False}
    assert any("max_length dropped" in n for n in t.notes)


def test_docs_table_lists_every_alias() -> None:
    from automodel.core.config import NEMO_NOT_SUPPORTED, NEMO_TARGET_ALIASES

    doc = (REPO / "docs/migrating.md").read_text()
    for their, alias in NEMO_TARGET_ALIASES.items():
        assert f"| `{their}` | " in doc, their
        if alias.ours:
            assert f"| `{their}` | `{alias.ours}` |" in doc, their
    for their in NEMO_NOT_SUPPORTED:
        assert f"| `{their}` | " in doc, their


def test_their_hellaswag_config(tmp_path: Path) -> None:
    """Their most common layout: HellaSwag data, `collate_fn` as a string, a top-level seed."""
    from automodel.core.config import instantiate
    from automodel.core.data import IGNORE_INDEX
    from automodel.core.models import load_tokenizer

    rows = [
        {"ctx": "reverse cat dog", "endings": ["cat dog", "dog cat"], "label": "1"},
        {"ctx": "reverse ant bee", "endings": ["bee ant", "ant bee"], "label": 0},
        {"ctx": "reverse owl", "endings": ["owl", "lo"], "label": "0"},
    ]
    data = tmp_path / "hellaswag.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = "\n".join(
        [
            "recipe: TrainFinetuneRecipeForNextTokenPrediction",
            "seed: 7",
            "step_scheduler: {global_batch_size: 2, local_batch_size: 1, max_steps: 1}",
            "model:",
            "  _target_: nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
            f"  pretrained_model_name_or_path: {ASSETS}/tiny_llama_base",
            "tokenizer:",
            "  _target_: nemo_automodel.NeMoAutoTokenizer.from_pretrained",
            f"  pretrained_model_name_or_path: {ASSETS}/tiny_tokenizer",
            "dataset:",
            "  _target_: nemo_automodel.components.datasets.llm.hellaswag.HellaSwag",
            f"  path_or_dataset: {data}",
            "  split: train",
            "  num_samples_limit: 2",
            "dataloader:",
            "  _target_: torchdata.stateful_dataloader.StatefulDataLoader",
            "  collate_fn: nemo_automodel.components.datasets.utils.default_collater",
            "  shuffle: true",
            "optimizer: {_target_: torch.optim.Adam, lr: 1.0e-4}",
        ]
    )
    cfg = load_config(write(tmp_path, text), sections=SECTIONS)
    validate_config(cfg, SECTIONS)
    assert cfg.rng.seed == 7 and cfg.dataloader.to_dict() == {"shuffle": True, "drop_last": False}
    tokenizer = load_tokenizer(f"{ASSETS}/tiny_tokenizer")
    dataset = instantiate(cfg.dataset, tokenizer=tokenizer)
    assert len(dataset) == 2  # num_samples_limit
    sample = dataset[0]
    answer = [t for t in sample["labels"].tolist() if t != IGNORE_INDEX]
    # their encoding: the ending tokenized on its own after the context, no EOS added
    assert answer == tokenizer("dog cat", add_special_tokens=False)["input_ids"]


def test_column_mapped_and_chat_datasets() -> None:
    column = "nemo_automodel.components.datasets.llm.column_mapped_text_instruction_dataset"
    data = {
        "dataset": {
            "_target_": f"{column}.ColumnMappedTextInstructionDataset",
            "path_or_dataset_id": "data.jsonl",
            "column_mapping": {"question": "q", "answer": "a"},
            "answer_only_loss_mask": True,
            "seq_length": 512,
            "padding": "max_length",
            "truncation": True,
            "limit_dataset_samples": 10,
        },
        "validation_dataset": {
            "_target_": "nemo_automodel.components.datasets.llm.chat_dataset.ChatDataset",
            "path_or_dataset_id": "chat.jsonl",
            "split": "train",
            "seq_length": 512,
        },
    }
    t = translate(data, {}, "cfg.yaml").data
    assert t["dataset"] == {
        "_target_": "automodel.core.data.instruction_dataset",
        "column_mapping": {"question": "q", "answer": "a"},
        "seq_length": 512,
        "path": "data.jsonl",
        "split": "train[:10]",
        "truncation": "truncate",
        "answer_only_loss": True,
        "prompt_format": "nemo_automodel",
    }
    # without truncation their seq_length only pads
    assert t["validation_dataset"] == {
        "_target_": "automodel.core.data.tool_call_dataset",
        "split": "train",
        "path": "chat.jsonl",
        "prompt_format": "nemo_automodel",  # their turn spans (docs/migrating.md)
    }
    # their shuffle_seed shuffles Hub and parquet data before the slice, never local JSON
    data["validation_dataset"]["shuffle_seed"] = 42
    t = translate(data, {}, "cfg.yaml")
    assert "shuffle_seed" not in t.data["validation_dataset"]
    assert any("shuffle_seed dropped" in n for n in t.notes)
    data["validation_dataset"]["path_or_dataset_id"] = "allenai/tulu-3-sft-mixture"
    assert translate(data, {}, "cfg.yaml").data["validation_dataset"]["shuffle_seed"] == 42


def test_their_kd_config(theirs: Path, tmp_path: Path, capsys) -> None:
    """Their KD recipe's spelling: top-level kd_ratio, kd_loss_fn, a teacher_model."""
    from automodel.cli._app import main

    text = theirs.read_text()
    text = text.replace(
        "TrainFinetuneRecipeForNextTokenPrediction",
        "KnowledgeDistillationRecipeForNextTokenPrediction",
    )
    text += "\n".join(
        [
            "",
            "teacher_model:",
            "  _target_: nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
            f"  pretrained_model_name_or_path: {ASSETS}/tiny_llama_base",
            "kd_ratio: 0.25",
            "kd_loss_fn:",
            "  _target_: nemo_automodel.components.loss.kd_loss.KDLoss",
            "  ignore_index: -100",
            "  temperature: 2.0",
            "  fp32_upcast: true",
            "",
        ]
    )
    path = tmp_path / "kd.yaml"
    path.write_text(text)
    translated = translate(*_data_and_where(path), str(path))
    assert translated.recipe == "kd.llm"
    assert translated.data["kd"] == {"kd_ratio": 0.25, "temperature": 2.0}
    assert "loss_fn" not in translated.data and "kd_loss_fn" not in translated.data
    assert main(["validate", str(path)]) == 0
    assert f"config OK: {path}" in capsys.readouterr().out


def _data_and_where(path: Path) -> tuple[dict, dict]:
    from automodel.core.config._yaml import load_yaml_file

    data, lines = load_yaml_file(path)
    return data, {key: f"{path}:{line}" for key, line in lines.items()}


def test_their_benchmark_config(tmp_path: Path, capsys) -> None:
    """Their benchmark recipe: synthetic data of seq_len tokens, checkpointing off, no nsys."""
    from automodel.cli._app import main

    text = "\n".join(
        [
            "recipe: BenchmarkingRecipeForNextTokenPrediction",
            "seed: 1234",
            "benchmark: {warmup_steps: 1, nsys_start: -1, nsys_end: -1, nsys_ranks: [], num_nodes: 1}",
            "step_scheduler:",
            "  global_batch_size: 2",
            "  local_batch_size: 1",
            "  ckpt_every_steps: 1000",
            "  val_every_steps: 1000",
            "  max_steps: 3",
            "model:",
            "  _target_: nemo_automodel.NeMoAutoModelForCausalLM.from_config",
            f"  config: {ASSETS}/tiny_llama",
            "checkpoint: {enabled: false}",
            "loss_fn:",
            "  _target_: nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy",
            "  fp32_upcast: false",
            "dataset:",
            "  _target_: nemo_automodel.components.datasets.llm.mock_iterable_dataset.MockIterableDataset",
            "  seq_len: 32",
            "  num_samples: 1000",
            "  batch_size: 2",  # their rows per item: the benchmark makes its own batches
            "dataloader: {_target_: torch.utils.data.DataLoader, batch_size: null, num_workers: 0}",
            "optimizer: {_target_: torch.optim.Adam, lr: 1.0e-4}",
            "ci: {time: '00:30:00', nodes: 8}",
        ]
    )
    path = write(tmp_path, text)
    t = translate(*_data_and_where(path), str(path))
    assert t.recipe == "benchmark.llm"
    assert t.data["benchmark"] == {"warmup_steps": 1, "seq_length": 32}
    assert "dataset" not in t.data and "dataloader" not in t.data and "checkpoint" not in t.data
    assert main(["validate", str(path)]) == 0
    assert f"config OK: {path}" in capsys.readouterr().out


@pytest.mark.slow
def test_their_command_line_with_two_processes(
    theirs: Path, tmp_path: Path, run_recipe, jsonl_rows
) -> None:
    """`automodel cfg.yaml --nproc-per-node 2` (their command line): FSDP2 over two processes
    trains on the same samples as one process does, to float tolerance."""
    runs = {}
    for name in ("one", "two"):
        run_dir = tmp_path / name
        overrides = [f"--logging.run_dir={run_dir}", f"--checkpoint.checkpoint_dir={run_dir}/ck"]
        overrides.append("--+logging.progress=false")
        if name == "one":
            run_recipe(theirs, overrides)
        else:
            command = [str(AUTOMODEL), str(theirs), "--nproc-per-node", "2", *overrides]
            result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, result.stderr[-4000:]
        runs[name] = [r["loss"] for r in jsonl_rows(run_dir / "training.jsonl")]
    assert runs["two"] == pytest.approx(runs["one"], rel=1e-5)


def test_their_lr_scheduler_defaults_are_written_out() -> None:
    data = {
        "optimizer": {"_target_": "torch.optim.Adam", "lr": 1.0e-5},
        "lr_scheduler": {"lr_decay_style": "WSD", "lr_warmup_steps": 5},
    }
    lr = translate(data, {}, "cfg.yaml").data["lr_scheduler"]
    assert lr == {"min_lr": 1.0e-5 * 0.01, "style": "wsd", "warmup_steps": 5}
    with pytest.raises(ConfigError, match="init_lr is not supported"):
        translate({"lr_scheduler": {"init_lr": 0.0}}, {}, "cfg.yaml")


def test_their_qlora_fp8_wandb_and_packing_sections() -> None:
    """`quantization:` NF4 under LoRA is our peft.quantize_base; 8-bit or fp4 weights are
    refused naming what to do; switched-off sections are dropped."""
    peft = {
        "_target_": "nemo_automodel.components._peft.lora.PeftConfig",
        "target_modules": ["*_proj"],
        "dim": 8,
    }
    qlora = {
        "load_in_4bit": True,
        "load_in_8bit": False,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "bfloat16",
    }
    data = {
        "peft": peft,
        "quantization": qlora,
        "fp8": {"enabled": False, "recipe_name": "tensorwise"},
        "wandb": {"enable": True, "project": "p", "group": "g", "dir": "logs"},
    }
    t = translate(data, {"quantization": "cfg.yaml:7"}, "cfg.yaml")
    assert t.data["peft"]["quantize_base"] == "nf4"
    assert t.where["peft.quantize_base"] == "cfg.yaml:7"
    assert "quantization" not in t.data and "fp8" not in t.data
    assert t.data["wandb"] == {"project": "p", "group": "g", "dir": "logs"}
    assert any("NF4 through torchao" in n for n in t.notes)
    ours = {k: v for k, v in t.data["peft"].items() if k != "_target_"}
    assert resolve_target(t.data["peft"]["_target_"])(**ours).quantize_base == "nf4"

    packed = {"packed_sequence_size": 64, "packing_strategy": "thd", "max_packs": 9, "num_proc": 4}
    packed = translate({"packed_sequence": packed}, {}, "cfg.yaml")
    assert packed.data["packed_sequence"] == {"packed_sequence_size": 64, "max_packs": 9}
    assert any("num_proc dropped" in n for n in packed.notes)

    off = translate({"wandb": {"enable": False, "project": "p"}}, {}, "cfg.yaml")
    assert "wandb" not in off.data and any("no W&B logging" in n for n in off.notes)

    refused = {
        "quantization.load_in_8bit": (
            {"peft": peft, "quantization": {"load_in_8bit": True}},
            "use load_in_4bit: true",
        ),
        "quantization.bnb_4bit_quant_type": (
            {"peft": peft, "quantization": {"load_in_4bit": True}},  # bitsandbytes' default: fp4
            "4-bit fp4 weights are not supported; set bnb_4bit_quant_type: nf4",
        ),
        "quantization": ({"quantization": qlora}, "add a peft: section"),
        "packed_sequence.packing_strategy": (
            {"packed_sequence": {"packing_strategy": "neat"}},
            "packing strategy 'neat' is not supported",
        ),
    }
    for key, (bad, message) in refused.items():
        with pytest.raises(ConfigError) as info:
            translate(bad, {}, "cfg.yaml")
        (problem,) = info.value.problems
        assert problem.key == key and message in problem.message, problem


def test_their_pipeline_subsection() -> None:
    """Their interleaved schedule, stage sizes and micro-batch rows in our keys; the global
    batch is kept (their grad_acc_steps style is resolved first), so each step is the same."""
    data = {
        "step_scheduler": {"local_batch_size": 8, "grad_acc_steps": 2},
        "distributed": {
            "strategy": "fsdp2",
            "pp_size": 2,
            "pipeline": {
                "pp_schedule": "Interleaved1F1B",
                "pp_microbatch_size": 2,
                "layers_per_stage": 2,
                "round_virtual_stages_to_pp_multiple": "down",
                "scale_grads_in_schedule": False,
                "patch_inner_model": False,
                "patch_causal_lm_model": False,
            },
        },
    }
    t = translate(data, {"distributed.pipeline.pp_microbatch_size": "cfg.yaml:9"}, "cfg.yaml", 4)
    assert t.data["distributed"] == {
        "strategy": "fsdp2",
        "pp_size": 2,
        "pp_schedule": "interleaved_1f1b",
        "pp_layers_per_stage": 2,
        "pp_stage_rounding": "down",
    }
    # 8 rows x 2 accumulation steps x 2 data-parallel ranks (4 processes / pp 2), now in
    # micro-batches of 2 rows (8 per step)
    assert t.data["step_scheduler"] == {"local_batch_size": 2, "global_batch_size": 32}
    assert t.where["step_scheduler.local_batch_size"] == "cfg.yaml:9"
    for bad, key in (
        ({"pp_schedule": "ZBVZeroBubble"}, "pp_schedule"),
        ({"scale_grads_in_schedule": True}, "scale_grads_in_schedule"),
        ({"pp_batch_sizes": 4}, "pp_batch_sizes"),
    ):
        with pytest.raises(ConfigError) as info:
            translate({"distributed": {"pp_size": 2, "pipeline": bad}}, {}, "cfg.yaml")
        assert [p.key for p in info.value.problems] == [f"distributed.pipeline.{key}"]


def test_their_collate_padding_is_the_loaders_pad_to_multiple_of() -> None:
    """Their default_collater's `pad_seq_len_divisible`: each batch's length a multiple of it,
    as our loader's `pad_to_multiple_of` pads (with pp_size > 1: each step's)."""
    collate = {
        "_target_": "nemo_automodel.components.datasets.utils.default_collater",
        "pad_seq_len_divisible": 160,
    }
    data = {
        "dataloader": {"collate_fn": dict(collate), "shuffle": True},
        "validation_dataloader": {"collate_fn": {**collate, "pad_seq_len_divisible": 8}},
    }
    where = {"dataloader.collate_fn.pad_seq_len_divisible": "cfg.yaml:5"}
    t = translate(data, where, "cfg.yaml")
    assert t.data["dataloader"] == {"shuffle": True, "pad_to_multiple_of": 160}
    assert t.data["validation_dataloader"] == {"pad_to_multiple_of": 8}
    assert t.where["dataloader.pad_to_multiple_of"] == "cfg.yaml:5"


def their_moe(name: str, ep_size: int, **backend) -> dict:
    """Their MoE layout: the model's BackendConfig names the experts and the dispatcher."""
    return {
        "recipe": "TrainFinetuneRecipeForNextTokenPrediction",
        "model": {
            "_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
            "pretrained_model_name_or_path": name,
            "backend": {
                "_target_": "nemo_automodel.components.models.common.BackendConfig",
                "attn": "te",
                "rms_norm": "torch_fp32",
                "fake_balanced_gate": False,
                **backend,
            },
        },
        "distributed": {"strategy": "fsdp2", "ep_size": ep_size},
    }


def test_their_moe_configs_get_a_moe_section() -> None:
    """Their MoE balancing lives in their model classes: the translation says so with
    `balancing: nemo_automodel`; their experts/dispatcher backends are ours."""
    qwen = their_moe("Qwen/Qwen3-30B-A3B", 8, experts="torch_mm", dispatcher="deepep")
    t = translate(qwen, {"distributed.ep_size": "cfg.yaml:9"}, "cfg.yaml", 8)
    assert t.data["moe"] == {
        "balancing": "nemo_automodel",
        "backend": "grouped_mm",
        "dispatcher": "deepep",
    }
    assert "backend" not in t.data["model"] and t.where["moe"] == "cfg.yaml:9"
    moonlight = their_moe("moonshotai/Moonlight-16B-A3B", 8, experts="te", dispatcher="hybridep")
    moe = translate(moonlight, {}, "cfg.yaml", 8).data["moe"]
    assert moe == {"balancing": "nemo_automodel", "backend": "auto", "dispatcher": "all_to_all"}
    # a Qwen3-MoE model balances there without expert parallelism too; a dense one gets no moe:
    single = translate(their_moe("Qwen/Qwen3-30B-A3B", 1, dispatcher="deepep"), {}, "cfg.yaml")
    assert single.data["moe"] == {"balancing": "nemo_automodel"}
    assert "moe" not in translate(their_moe("Qwen/Qwen3-0.6B", 1), {}, "cfg.yaml").data
    ernie = translate(their_moe("baidu/ERNIE-4.5-21B-A3B-PT", 1), {}, "cfg.yaml")  # swapped too
    assert ernie.data["moe"] == {"balancing": "nemo_automodel"}
    gpt_oss = translate(their_moe("openai/gpt-oss-20b", 8), {}, "cfg.yaml", 8)  # swapped too
    assert gpt_oss.data["moe"] == {"balancing": "nemo_automodel"}
    assert gpt_oss.data["model"]["dequantize"] is True  # MXFP4 on the Hub, dequantized there
    assert "dequantize" not in t.data["model"]
    # their FakeBalancedGate (benchmarks): every expert the same load, the gate unused
    fake = their_moe("Qwen/Qwen3-30B-A3B", 8, fake_balanced_gate=True)
    assert translate(fake, {}, "cfg.yaml", 8).data["moe"]["routing"] == "balanced"

    refused = {
        # a family whose blocks automodel.moe does not swap (and whose class does not balance)
        "distributed.ep_size": (
            their_moe("inclusionAI/Ling-mini-2.0", 8), "set distributed.ep_size: 1"
        ),
        # what changes the numbers, not only the kernels
        "model.backend.fake_gate_noise": (
            their_moe("Qwen/Qwen3-30B-A3B", 8, fake_balanced_gate=True, fake_gate_noise=0.1),
            "moe.routing: balanced",
        ),
        "model.backend.te_fp8": (
            their_moe("Qwen/Qwen3-30B-A3B", 8, te_fp8={"recipe": "mxfp8"}), "te_fp8"
        ),
        "model.backend.experts": (
            their_moe("Qwen/Qwen3-30B-A3B", 8, experts="torch_mm_mxfp8"), "use torch_mm"
        ),
        # (their LoRA on the MoE experts: tests/recipes/test_llm_expert_lora.py)
    }  # fmt: skip
    for key, (bad, message) in refused.items():
        with pytest.raises(ConfigError) as info:
            translate(bad, {}, "cfg.yaml", 8)
        assert [p.key for p in info.value.problems] == [key]
        assert message in info.value.problems[0].message, info.value.problems[0].message


def tiny_moe(kind: str, **options):
    """A tiny real transformers MoE model of their DeepSeek-V3 or Qwen3-MoE family."""
    import transformers

    common = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48}
    common |= {"num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 4}
    if kind == "qwen3_moe":
        config = transformers.Qwen3MoeConfig(
            **common, head_dim=8, moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
            **options,
        )  # fmt: skip
        return transformers.Qwen3MoeForCausalLM(config)
    config = transformers.DeepseekV3Config(
        **common, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=2, n_group=2,
        topk_group=1, first_k_dense_replace=0, q_lora_rank=16, kv_lora_rank=16,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, head_dim=8,
    )  # fmt: skip
    return transformers.DeepseekV3ForCausalLM(config)


def test_nemo_balancing_is_their_model_class_balancing() -> None:
    """`moe.balancing: nemo_automodel` on a DeepSeek-V3 model is their bias update (1e-3, no aux
    loss); on a Qwen3-MoE model their aux loss, whose token fractions they divide by top-k:
    the loss here is router_aux_loss_coef x theirs, however our formula normalises."""
    from automodel.core.config import ConfigNode
    from automodel.moe import MoE
    from automodel.recipes._moe import MoeStep, apply_moe
    from automodel.recipes._moe_nemo import applied_section
    from automodel.recipes._sections import Moe

    section, cfg = Moe(balancing="nemo_automodel"), ConfigNode({"moe": {}})
    torch.manual_seed(0)
    deepseek = tiny_moe("deepseek_v3")
    apply_moe(deepseek, section, cfg)
    (block,) = [m for m in deepseek.modules() if isinstance(m, MoE)]
    assert (block.config.balancing, block.config.bias_update_rate) == ("bias", 1e-3)
    assert applied_section(deepseek, section).balancing == "bias"  # MoeStep's bias update

    coef, top_k, experts = 0.01, 2, 8
    qwen = tiny_moe("qwen3_moe", router_aux_loss_coef=coef)
    apply_moe(qwen, section, cfg)
    (block,) = [m for m in qwen.modules() if isinstance(m, MoE)]
    assert block.config.balancing == "aux_loss"
    assert block.config.aux_loss_coeff == pytest.approx(coef / top_k)
    x = torch.randn(1, 24, 32)
    block.train()
    block(x)
    scores = torch.softmax(x.reshape(-1, 32) @ block.gate.weight.float().T, dim=-1)
    load = torch.bincount(scores.topk(top_k, dim=-1).indices.reshape(-1), minlength=experts)
    tokens = scores.shape[0]
    theirs = (load * experts / (top_k * tokens) * scores.sum(0) / tokens).sum()
    assert block.gate.aux_loss.item() == pytest.approx(coef * theirs.item(), rel=1e-5)
    assert MoeStep(qwen, section, None).section.balancing == "aux_loss"

    no_aux = tiny_moe("qwen3_moe", router_aux_loss_coef=0.0)
    apply_moe(no_aux, section, cfg)
    assert next(m for m in no_aux.modules() if isinstance(m, MoE)).config.balancing == "none"


def test_their_lora_selection_rules() -> None:
    """Their PeftConfig: match_all_linear and exclude_modules alone adapt the LM head too (ours
    leave output heads out, so it is named), an exclude pattern may match nothing; no selection
    at all is their `*_proj`. Checked on the modules each selection adapts in a real model."""
    from automodel.core.models import AutoModelForCausalLM
    from automodel.peft import apply_lora

    def adapted(theirs: dict, **sections: dict) -> set[str]:
        peft = {"_target_": "nemo_automodel.components._peft.lora.PeftConfig", **theirs}
        data = {"peft": peft, **sections}
        ours = translate(data, {}, "cfg.yaml").data["peft"]
        config = resolve_target(ours.pop("_target_"))(**ours)
        model = AutoModelForCausalLM.from_pretrained(ASSETS / "tiny_llama_base")
        apply_lora(model, config)
        paths = {p for p, m in model.named_modules() if type(m).__name__ == "LoraLinear"}
        return {p.rsplit(".", 1)[-1] for p in paths}

    linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert adapted({"match_all_linear": True}) == linear | {"lm_head"}
    # their wildcard: `*` any characters; a pattern matching nothing is fine there
    excluded = ["*.q_proj", "*vision_tower*", "*mlp*"]
    assert adapted({"exclude_modules": excluded}) == {"k_proj", "v_proj", "o_proj", "lm_head"}
    assert adapted({"exclude_modules": ["*lm_head*"]}) == linear
    assert adapted({}) == linear  # their default: *_proj
    assert adapted({"target_modules": ["*.q_proj"]}) == {"q_proj"}

    peft = {"_target_": "nemo_automodel.components._peft.lora.PeftConfig", "dim": 8}
    fused = {"_target_": "nemo_automodel.components.loss.linear_ce.FusedLinearCrossEntropy"}
    # their fused loss reads the head's base weight: their head adapter never trains, so ours
    # leaves the head out (the same run)
    assert adapted({"match_all_linear": True}, loss_fn=fused) == linear
    assert adapted({"exclude_modules": excluded}, loss_fn=fused) == {"k_proj", "v_proj", "o_proj"}
    notes = translate({"peft": {**peft, "match_all_linear": True}, "loss_fn": fused}, {}, "c.yaml")
    assert any("adapter stays zero and never trains" in n for n in notes.notes)
    nf4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}  # bitsandbytes keeps the head
    t = translate({"peft": {**peft, "match_all_linear": True}, "quantization": nf4}, {}, "c.yaml")
    assert t.data["peft"]["quantize_base"] == "nf4"
    assert t.data["peft"]["quantize_skip"] == ["lm_head"]  # adapted, its base unquantized
    assert t.data["peft"]["target_modules"] == ["lm_head"]
    assert adapted({"match_all_linear": True}, quantization=nf4) == linear | {"lm_head"}
    # their patterns leave the head out: nothing to keep unquantized
    no_head = translate({"peft": {**peft, "exclude_modules": ["*lm_head*"]}, "quantization": nf4}, {}, "c.yaml")  # fmt: skip
    assert "quantize_skip" not in no_head.data["peft"]


def test_their_null_sizes_and_dequantized_checkpoints() -> None:
    """Their null (or `none`) parallel sizes are 1; `dequantize_base_checkpoint: true` is the
    loader's `dequantize` (a quantized checkpoint's own config, set to dequantize)."""
    import transformers

    from automodel.core.models._auto_model import dequantizing_config

    data = {
        "model": {
            "_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
            "pretrained_model_name_or_path": "x",
        },
        "distributed": {"ep_size": None, "dp_replicate_size": "none", "tp_size": 2},
        "checkpoint": {"dequantize_base_checkpoint": True, "checkpoint_dir": "c"},
    }
    t = translate(data, {"checkpoint.dequantize_base_checkpoint": "cfg.yaml:4"}, "cfg.yaml")
    assert t.data["distributed"] == {"ep_size": 1, "dp_replicate_size": 1, "tp_size": 2}
    assert t.data["model"]["dequantize"] is True and t.where["model.dequantize"] == "cfg.yaml:4"
    assert t.data["checkpoint"] == {"checkpoint_dir": "c"}
    off = {**data, "checkpoint": {"dequantize_base_checkpoint": False}}
    assert "dequantize" not in translate(off, {}, "cfg.yaml").data["model"]

    config = transformers.LlamaConfig()
    assert dequantizing_config(config) is None  # not quantized: loaded as it is
    config.quantization_config = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    fp8 = dequantizing_config(config)
    assert type(fp8).__name__ == "FineGrainedFP8Config" and fp8.dequantize is True
    config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    with pytest.raises(UserError, match="bitsandbytes, which transformers cannot dequantize"):
        dequantizing_config(config)


def test_their_fused_adam_is_adamw_over_float32_master_weights() -> None:
    """Transformer Engine's FusedAdam with master weights on a bfloat16 model: AdamW updating
    float32 parameters that FSDP2 computes with in bfloat16; compressed optimizers refused."""
    data = {
        "model": {
            "_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
            "pretrained_model_name_or_path": "x",
            "torch_dtype": "bf16",
        },
        "distributed": {"strategy": "fsdp2"},
        "optimizer": {
            "_target_": "transformer_engine.pytorch.optimizers.fused_adam.FusedAdam",
            "lr": 1.0e-5,
            "betas": [0.9, 0.95],
            "weight_decay": 0.1,
            "adam_w_mode": True,
            "bias_correction": True,
            "master_weights": True,
            "store_param_remainders": True,
            "exp_avg_dtype": "torch.float32",
        },
    }
    t = translate(data, {"optimizer.master_weights": "cfg.yaml:9"}, "cfg.yaml")
    assert t.data["optimizer"] == {
        "_target_": "torch.optim.AdamW",
        "lr": 1.0e-5,
        "betas": [0.9, 0.95],
        "weight_decay": 0.1,
    }
    assert t.data["model"]["torch_dtype"] == "float32"
    assert t.data["distributed"] == {"strategy": "fsdp2", "mp_param_dtype": "bfloat16"}
    assert t.where["distributed.mp_param_dtype"] == "cfg.yaml:9"
    adam = {**data["optimizer"], "adam_w_mode": False, "master_weights": False}
    plain = translate({**data, "optimizer": adam}, {}, "cfg.yaml").data
    assert plain["optimizer"]["_target_"] == "torch.optim.Adam"
    assert plain["model"]["torch_dtype"] == "bf16" and "mp_param_dtype" not in plain["distributed"]
    refused = {
        "optimizer.exp_avg_dtype": {**data["optimizer"], "exp_avg_dtype": "torch.bfloat16"},
        "optimizer.master_weights": data["optimizer"],  # with ddp: no float32 master weights
        "optimizer._target_": {"_target_": "flashoptim.FlashAdamW", "master_weight_bits": 24},
    }
    for key, optimizer in refused.items():
        ddp = {"strategy": "ddp"} if key == "optimizer.master_weights" else {"strategy": "fsdp2"}
        with pytest.raises(ConfigError) as info:
            translate({**data, "distributed": ddp, "optimizer": optimizer}, {}, "cfg.yaml")
        assert [p.key for p in info.value.problems] == [key]


def test_their_fp8_section_is_torchao_float8_training() -> None:
    """Their `fp8:` (torchao float8 training) is our `fp8:`: the same conversion of the same
    layers (their filter_fqns by substring, dims multiple of 16); speed/memory keys dropped."""
    from automodel.core.config import ConfigNode
    from automodel.core.models import AutoModelForCausalLM
    from automodel.recipes._fp8 import apply_fp8, read_fp8

    theirs = {
        "enabled": True,
        "recipe_name": "tensorwise",
        "enable_fsdp_float8_all_gather": True,
        "precompute_float8_dynamic_scale_for_fsdp": True,
        "force_recompute_fp8_weight_in_bwd": True,
        "filter_fqns": ["lm_head", "layers.1.mlp"],
        "emulate": True,
    }
    t = translate({"fp8": theirs}, {}, "cfg.yaml")
    assert t.data["fp8"] == {
        "recipe": "tensorwise",
        "skip_modules": ["lm_head", "layers.1.mlp"],
        "fsdp_float8_all_gather": True,
        "emulate": True,
    }
    rowwise = translate({"fp8": {**theirs, "recipe_name": "rowwise"}}, {}, "cfg.yaml")
    assert "fsdp_float8_all_gather" not in rowwise.data["fp8"]  # tensorwise only, there too
    with pytest.raises(ConfigError, match=r"fp8\.amax_history_len is not supported"):
        translate({"fp8": {"enabled": True, "amax_history_len": 16}}, {}, "cfg.yaml")

    cfg = ConfigNode(t.data)
    model = AutoModelForCausalLM.from_pretrained(ASSETS / "tiny_llama_base")
    names = list(model.state_dict())
    batch = torch.tensor([[5, 9, 13, 21, 34, 55, 8, 3]])
    before = model(batch, labels=batch).loss
    converted = apply_fp8(model, read_fp8(cfg), cfg)
    assert {p.split(".", 3)[-1] for p in converted} == {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    }  # fmt: skip
    assert not any(".layers.1.mlp." in p or "lm_head" in p for p in converted)
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "Float8Linear"
    assert list(model.state_dict()) == names  # checkpoints are unchanged
    after = model(batch, labels=batch).loss
    after.backward()
    assert after.item() == pytest.approx(before.item(), rel=0.05) and after.item() != before.item()

    for bad, key in (
        ({"recipe": "delayed"}, "fp8.recipe"),
        ({"emulate": False}, "fp8.emulate"),  # no float8 matmuls on this machine
        ({"emulate": True, "peft": True}, "fp8"),
    ):
        data = {"fp8": {k: v for k, v in bad.items() if k != "peft"}}
        if "peft" in bad:
            data["peft"] = {"_target_": "automodel.peft.LoraConfig", "match_all_linear": True}
        cfg = ConfigNode(data)
        with pytest.raises(ConfigError) as info:
            apply_fp8(torch.nn.Sequential(torch.nn.Linear(16, 16)), read_fp8(cfg), cfg)
        assert [p.key for p in info.value.problems] == [key]
