"""pretrain.llm on Megatron indexed data and on a `datasets` stream: the examples train,
validate and resume exactly; `automodel preprocess` keeps an existing output."""

from __future__ import annotations

from pathlib import Path

from _shared import REPO

CONFIG = REPO / "examples/llm_pretrain/tiny_pretrain_indexed.yaml"
STREAMING = REPO / "examples/llm_pretrain/tiny_pretrain_streaming.yaml"
ASSETS = REPO / "examples/llm_pretrain/assets"
STEPS, MIDDLE = 6, 3


def short_run(run_dir: Path, *extra: str) -> list[str]:
    """STEPS steps, validation and a checkpoint every MIDDLE, in `run_dir`."""
    return [
        f"--step_scheduler.max_steps={STEPS}",
        f"--step_scheduler.ckpt_every_steps={MIDDLE}",
        f"--step_scheduler.val_every_steps={MIDDLE}",
        "--step_scheduler.log_every_steps=1",
        f"--logging.run_dir={run_dir}",
        f"--checkpoint.checkpoint_dir={run_dir}/checkpoints",
        "--logging.progress=false",
        "--lr_scheduler.warmup_steps=1",
        *extra,
    ]


def overrides(run_dir: Path, *extra: str) -> list[str]:
    """`short_run` of the indexed example, its index cache in `run_dir` too."""
    cache = [
        f"--{name}.index_cache_dir={run_dir}/index_cache"
        for name in ("dataset", "validation_dataset")
    ]
    return short_run(run_dir, *cache, *extra)


def test_the_blend_trains_on_full_windows_and_resumes_exactly(
    tmp_path, run_recipe, jsonl_rows, resume_dir_from
) -> None:
    first = tmp_path / "first"
    recipe = run_recipe(CONFIG, overrides(first))
    rows = jsonl_rows(first / "training.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["num_label_tokens"] == 16 * 63 for r in rows)  # 64-token windows, no padding
    assert [r["step"] for r in jsonl_rows(first / "validation.jsonl")] == [0, MIDDLE, STEPS]
    shares = recipe.train_set.weights.tolist()
    assert [round(w, 6) for w in shares] == [0.7, 0.3]
    cached = sorted(p.suffix for p in (first / "index_cache").iterdir())
    assert cached == [".npy"] * 16  # per part: 2 datasets x 3 orders, the blend's 2 arrays

    second = tmp_path / "second"
    resume_dir_from(first, second, MIDDLE)
    run_recipe(CONFIG, overrides(second, "--checkpoint.restore_from=latest"))
    assert [r["loss"] for r in jsonl_rows(second / "training.jsonl")] == [r["loss"] for r in rows]


def test_automodel_preprocess_refuses_to_replace_an_output(tmp_path, capsys) -> None:
    """(The documented commands, run by tests/docs, write the example's shipped corpora byte
    for byte.) An existing output is kept unless --overwrite says otherwise."""
    from automodel.recipes.preprocess import main

    argv = ["-i", str(ASSETS / "copy_text.jsonl"), "-o", str(tmp_path / "copy"), "--tokenizer",
            str(REPO / "examples/llm_finetune/assets/tiny_tokenizer"), "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    first = (tmp_path / "copy.bin").read_bytes()
    assert (tmp_path / "copy.bin").read_bytes() == (ASSETS / "indexed/copy.bin").read_bytes()
    assert main(argv) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "copy.bin").read_bytes() == first
    assert main([*argv, "--overwrite"]) == 0


def test_the_stream_trains_and_resumes_exactly(
    tmp_path, run_recipe, jsonl_rows, resume_dir_from
) -> None:
    common = [
        f"--step_scheduler.max_steps={STEPS}",
        f"--step_scheduler.ckpt_every_steps={MIDDLE}",
        f"--step_scheduler.val_every_steps={MIDDLE}",
        "--step_scheduler.log_every_steps=1",
        "--logging.progress=false",
        "--lr_scheduler.warmup_steps=1",
    ]

    def where(run_dir: Path) -> list[str]:
        return [
            f"--logging.run_dir={run_dir}",
            f"--checkpoint.checkpoint_dir={run_dir}/checkpoints",
        ]

    first = tmp_path / "first"
    run_recipe(STREAMING, [*common, *where(first)])
    rows = jsonl_rows(first / "training.jsonl")
    assert all(r["num_label_tokens"] == 16 * 63 for r in rows)
    assert [r["step"] for r in jsonl_rows(first / "validation.jsonl")] == [0, MIDDLE, STEPS]
    second = tmp_path / "second"
    resume_dir_from(first, second, MIDDLE)
    run_recipe(STREAMING, [*common, *where(second), "--checkpoint.restore_from=latest"])
    assert [r["loss"] for r in jsonl_rows(second / "training.jsonl")] == [r["loss"] for r in rows]


NANOGPT = REPO / "examples/llm_pretrain/tiny_pretrain_nanogpt.yaml"


def test_nanogpt_shards_train_without_a_tokenizer_and_resume_exactly(
    tmp_path, run_recipe, jsonl_rows, resume_dir_from
) -> None:
    """The example: full 64-token windows, no tokenizer (none saved beside the model), and a
    run resumed mid-way reads exactly the next windows."""
    first = tmp_path / "first"
    recipe = run_recipe(NANOGPT, short_run(first))
    assert recipe.tokenizer is None
    rows = jsonl_rows(first / "training.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["num_label_tokens"] == 16 * 63 for r in rows)  # seq_len 63 targets per window
    saved = {p.name for p in (first / f"checkpoints/epoch_0_step_{STEPS}/model").iterdir()}
    assert "config.json" in saved and not any(name.startswith("tokenizer") for name in saved)
    second = tmp_path / "second"
    resume_dir_from(first, second, MIDDLE)
    run_recipe(NANOGPT, short_run(second, "--checkpoint.restore_from=latest"))
    assert [r["loss"] for r in jsonl_rows(second / "training.jsonl")] == [r["loss"] for r in rows]


def test_the_shipped_shards_are_what_their_script_writes(tmp_path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("shards", ASSETS / "make_nanogpt_shards.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(tmp_path)
    for shard in ("reverse_train_000000.bin", "reverse_val_000000.bin"):
        assert (tmp_path / shard).read_bytes() == (ASSETS / "nanogpt" / shard).read_bytes()


THEIR_NANOGPT = """\
recipe: TrainFinetuneRecipeForNextTokenPrediction
step_scheduler:
  global_batch_size: 8
  local_batch_size: 2
  ckpt_every_steps: 2000
  num_epochs: 1
  max_steps: 3
dist_env:
  backend: nccl
  timeout_minutes: 1
model:
  _target_: nemo_automodel.components.models.gpt2.build_gpt2_model
  vocab_size: 512
  n_positions: 128
  n_embd: 32
  n_layer: 2
  n_head: 4
  bos_token_id: 1
  eos_token_id: 2
dataset:
  _target_: nemo_automodel.components.datasets.llm.nanogpt_dataset.NanogptDataset
  file_pattern: "{shards}/reverse_train_*.bin"
  seq_len: 31
  shuffle_files: false
  align_to_bos: false
dataloader:
  _target_: torchdata.stateful_dataloader.StatefulDataLoader
  shuffle: false
  collate_fn: nemo_automodel.components.datasets.utils.default_collater
loss_fn:
  _target_: nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy
optimizer:
  _target_: torch.optim.AdamW
  lr: 2.0e-4
  betas: [0.9, 0.95]
  weight_decay: 0.1
distributed:
  strategy: fsdp2
  dp_size: none
  tp_size: 1
  cp_size: 1
  sequence_parallel: false
checkpoint:
  enabled: false
"""


def test_their_nanogpt_pretraining_config_runs_as_transformers_gpt2(
    tmp_path, run_recipe, jsonl_rows, monkeypatch
) -> None:
    """Their examples/llm_pretrain/nanogpt_pretrain.yaml layout (smaller sizes, the repo's
    shards): their GPT-2 builder is transformers' GPT-2 with their blocks, their shard reader
    ours, no tokenizer; the migrated config gives the same losses bit for bit."""
    from transformers import GPT2LMHeadModel

    from automodel.core.config import load_config
    from automodel.core.config._nemo_compat import migrate
    from automodel.recipes.llm.finetune import SECTIONS

    theirs = tmp_path / "nanogpt_pretrain.yaml"
    theirs.write_text(THEIR_NANOGPT.format(shards=ASSETS / "nanogpt"))
    cfg = load_config(theirs, sections=SECTIONS)
    assert cfg.model.to_dict() == {
        "_target_": "automodel.core.models.AutoModelForCausalLM.from_config",
        "config": {"model_type": "gpt2"},
        **{"vocab_size": 512, "n_positions": 128, "n_embd": 32, "n_layer": 2, "n_head": 4},
        **{"bos_token_id": 1, "eos_token_id": 2},
        **{"activation_function": "gelu", "resid_pdrop": 0.0},
    }
    assert cfg.dataset._target_ == "automodel.core.data.nanogpt_dataset"
    ours = tmp_path / "ours.yaml"
    ours.write_text(migrate(str(theirs)))
    monkeypatch.chdir(tmp_path)
    runs = {}
    for name, path in (("theirs", theirs), ("ours", ours)):
        run_dir = tmp_path / name
        recipe = run_recipe(path, [f"--+logging.run_dir={run_dir}", "--+logging.progress=false"])
        model = recipe.unwrapped
        assert isinstance(model, GPT2LMHeadModel) and recipe.tokenizer is None
        assert model.config.activation_function == "gelu" and model.config.resid_pdrop == 0.0
        runs[name] = [r["loss"] for r in jsonl_rows(run_dir / "training.jsonl")]
    assert len(runs["theirs"]) == 3 and runs["theirs"] == runs["ours"]
