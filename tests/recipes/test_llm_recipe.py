"""End-to-end tests of the finetune.llm / pretrain.llm recipe on the tiny offline assets."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from itertools import takewhile
from pathlib import Path

import pytest
import torch
from _shared import PRETRAIN, REPO, SFT

from automodel.core.config import ConfigError, load_config
from automodel.recipes.llm import FinetuneRecipeForCausalLM, main

AUTOMODEL = Path(sys.executable).with_name("automodel")


def _short(run_dir: Path, steps: int = 4, *extra: str) -> list[str]:
    return [
        f"--step_scheduler.max_steps={steps}",
        "--step_scheduler.val_every_steps=2",
        f"--step_scheduler.ckpt_every_steps={steps}",
        "--step_scheduler.log_every_steps=1",
        f"--logging.run_dir={run_dir}",
        f"--checkpoint.checkpoint_dir={run_dir}/checkpoints",
        "--+logging.progress=false",
        "--lr_scheduler.warmup_steps=1",
        *extra,
    ]


def _train(config: Path, run_dir: Path, *extra: str, steps: int = 4) -> FinetuneRecipeForCausalLM:
    cfg = load_config(config, _short(run_dir, steps, *extra))
    recipe = FinetuneRecipeForCausalLM(cfg)
    recipe.setup()
    recipe.run_train_validation_loop()
    return recipe


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _summary(log: str, run_dir: Path) -> dict[str, str]:
    """The end-of-run summary's lines in `log` (name -> value); it appears exactly once."""
    heading = f"run summary ({run_dir}):\n"
    assert log.count(heading) == 1, log[-3000:]
    lines = takewhile(lambda line: line.startswith("  "), log.split(heading, 1)[1].splitlines())
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in lines)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module) -> tuple:
    run_dir = tmp_path_factory.mktemp("sft")
    return _train(SFT, run_dir), run_dir


def test_sft_trains_validates_and_logs(sft_run):
    _, run_dir = sft_run
    train = _rows(run_dir / "training.jsonl")
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for row in train:
        assert row["loss"] > 0 and row["grad_norm"] is not None and row["tps"] > 0
        assert row["num_label_tokens"] > 0
    val = _rows(run_dir / "validation.jsonl")
    assert [r["step"] for r in val] == [0, 2, 4]
    assert val[-1]["loss"] < val[0]["loss"]  # it learns, even in four steps


def test_checkpoint_loads_in_transformers_with_identical_logits(sft_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe, run_dir = sft_run
    root = run_dir / "checkpoints"
    latest = (root / "LATEST").read_text().strip()
    assert latest == "epoch_0_step_4"
    model_dir = root / latest / "model"
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (model_dir / name).is_file(), name
    loaded, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    assert not any(info.values()), info
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("reverse cat dog owl", return_tensors="pt").input_ids
    recipe.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, recipe.model(ids).logits)
    saved = load_config(root / latest / "config.yaml")
    assert saved.step_scheduler.max_steps == 4  # the resolved config, overrides applied


def test_grad_accumulation_and_padding_free_match_one_big_batch(tmp_path, monkeypatch_module):
    """Loss normalised by the step's label tokens: 2 micro-batches of 8 == 1 batch of 16 ==
    the same 2 micro-batches padding-free (each one row of its samples end to end, no padding;
    validation too)."""
    common = ["--step_scheduler.global_batch_size=16", "--dataloader.shuffle=false"]
    acc = _train(SFT, tmp_path / "acc", *common, "--step_scheduler.local_batch_size=8", steps=2)
    big = _train(SFT, tmp_path / "big", *common, "--step_scheduler.local_batch_size=16", steps=2)
    free = _train(
        SFT, tmp_path / "free", *common, "--step_scheduler.local_batch_size=8",
        "--+dataloader.padding_free=true", "--+validation_dataloader.padding_free=true", steps=2,
    )  # fmt: skip
    assert acc.step_scheduler.grad_acc_steps == 2 and big.step_scheduler.grad_acc_steps == 1
    samples = [free.train_set[i] for i in range(8)]
    for loader in (free.train_loader, free.val_loader):  # one row, every token real
        batch = loader.collate_fn(samples)
        assert batch["input_ids"].shape == (1, sum(len(s["input_ids"]) for s in samples))
    for name in ("acc", "free"):
        rows = _rows(tmp_path / name / "training.jsonl")
        for a, b in zip(rows, _rows(tmp_path / "big/training.jsonl"), strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
            assert a["num_label_tokens"] == b["num_label_tokens"]
    free_val, acc_val = (
        _rows(tmp_path / "free/validation.jsonl"),
        _rows(tmp_path / "acc/validation.jsonl"),
    )
    for a, b in zip(free_val, acc_val, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for model in (acc.model, free.model):
        for (name, p), q in zip(model.named_parameters(), big.model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_pretrain_with_packing_and_fused_loss(tmp_path, monkeypatch_module, caplog):
    caplog.set_level("INFO")
    recipe = _train(PRETRAIN, tmp_path, "--+logging.plot=true", steps=2)
    assert "packing efficiency" in caplog.text
    # logging.plot: the run draws its plot at the end, and the summary shows where
    assert _summary(caplog.text, tmp_path)["plot"] == str(tmp_path / "metrics.png")
    assert (tmp_path / "metrics.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "metrics.svg").stat().st_size > 0
    assert 0.5 < recipe.train_set.efficiency <= 1.0
    rows = _rows(tmp_path / "training.jsonl")
    masked = _train(
        PRETRAIN, tmp_path / "masked", "--loss_fn._target_=automodel.core.losses.MaskedCrossEntropy",
        "--~loss_fn.chunk_len", steps=2,
    )  # fmt: skip
    for fused, plain in zip(rows, _rows(tmp_path / "masked/training.jsonl"), strict=True):
        assert fused["loss"] == pytest.approx(plain["loss"], rel=1e-4)
    del masked


def test_bad_batch_math_fails_before_the_model_loads(tmp_path, monkeypatch_module, capsys):
    argv = ["-c", str(SFT), "--step_scheduler.local_batch_size=5", f"--logging.run_dir={tmp_path}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "global_batch_size 32 is not divisible by local_batch_size 5" in err
    assert not (tmp_path / "training.jsonl").exists()
    with pytest.raises(ConfigError, match="not divisible"):
        FinetuneRecipeForCausalLM(load_config(SFT, ["--step_scheduler.local_batch_size=5"])).setup()


def test_padding_free_is_refused_where_documents_would_mix(monkeypatch_module, capsys):
    """With packing (rows without padding already), and with a model whose layers would carry
    one document into the next: config errors naming the key."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from automodel.recipes.llm._data import check_documents

    free = ["--+dataloader.padding_free=true"]
    assert main(["-c", str(PRETRAIN), *free]) == 2  # before any model is built
    err = capsys.readouterr().err
    assert "dataloader.padding_free" in err and "not both" in err
    small = {"hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 64}
    mamba = AutoModelForCausalLM.from_config(AutoConfig.for_model("mamba", **small))
    with pytest.raises(ConfigError, match="rows of several documents need a model") as caught:
        check_documents(load_config(SFT, free), mamba, local_batch_size=16, cp_size=1)
    assert caught.value.problems[0].key == "dataloader.padding_free"


@pytest.mark.parametrize(
    "config",
    [
        "examples/llm_finetune/tiny_sft.yaml",
        "examples/llm_pretrain/tiny_pretrain.yaml",
        "examples/llm_finetune/llama3_2/llama3_2_1b_squad.yaml",
        "examples/llm_finetune/qwen3/qwen3_0_6b_chat.yaml",
    ],
)
def test_example_configs_validate_offline(config, monkeypatch_module, capsys):
    assert main(["--validate-only", "-c", str(REPO / config)]) == 0, capsys.readouterr().err


def test_readme_command_through_the_cli(tmp_path):
    """The README's main command, shortened, as a user runs it: a real `automodel` process."""
    result = subprocess.run(
        [str(AUTOMODEL), "finetune", "llm", "-c", str(SFT), *_short(tmp_path, 2)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation step 2: loss" in result.stderr
    assert (tmp_path / "checkpoints/epoch_0_step_2/model/model.safetensors").is_file()
    # the run ends with its summary, read back from the metrics files
    summary = _summary(result.stderr, tmp_path)
    train, val = _rows(tmp_path / "training.jsonl"), _rows(tmp_path / "validation.jsonl")
    real, label = (sum(r[k] for r in train) for k in ("num_real_tokens", "num_label_tokens"))
    best = min(val, key=lambda r: r["loss"])
    assert re.fullmatch(r"\d+\.\d s", summary["wall time"]), summary
    assert summary["steps"] == "2"
    assert summary["tokens"] == f"{real:,} real, {label:,} label"
    assert summary["validation loss"] == (
        f"final {val[-1]['loss']:.4f} at step 2, best {best['loss']:.4f} at step {best['step']}"
    )
    assert summary["last checkpoint"] == str(tmp_path / "checkpoints/epoch_0_step_2")
    assert summary["plot"] == f"automodel plot {shlex.quote(str(tmp_path))}"


def test_freeze_patterns_and_embeddings_keep_those_weights(tmp_path, monkeypatch_module):
    from automodel.core.models import AutoModelForCausalLM

    recipe = _train(
        SFT, tmp_path, "--+freeze.patterns=[model.layers.0.*]", "--+freeze.embeddings=true", steps=2
    )
    initial = AutoModelForCausalLM.from_config(
        "examples/llm_finetune/assets/tiny_llama", seed=1234
    ).state_dict()
    optimized = {id(p) for group in recipe.optimizer.param_groups for p in group["params"]}
    for name, param in recipe.unwrapped.named_parameters():
        frozen = name.startswith("model.layers.0.") or name == "model.embed_tokens.weight"
        assert param.requires_grad is not frozen, name
        assert (id(param) in optimized) is not frozen, name
        assert torch.equal(param, initial[name]) is frozen, name


def test_freeze_pattern_that_matches_nothing_is_a_config_error(tmp_path, monkeypatch_module):
    with pytest.raises(ConfigError, match=r"'model.layer.0.\*' matches no parameter"):
        _train(SFT, tmp_path, "--+freeze.patterns=[model.layer.0.*]", steps=1)


def test_dataloader_target_is_called_with_the_dataset(tmp_path, monkeypatch_module):
    recipe = _train(
        SFT, tmp_path, "--+dataloader._target_=automodel.core.data.build_dataloader",
        "--dataloader.shuffle=false", "--+dataloader.seed=3", steps=1,
    )  # fmt: skip
    assert recipe.train_loader.sampler.shuffle is False
    assert recipe.train_loader.batch_size == 16


def test_neftune_adds_bounded_noise_to_embeddings_in_training_only(tmp_path, monkeypatch_module):
    """`neftune.noise_alpha: a`: the input embeddings get uniform noise in [-b, b] with
    b = a / sqrt(L × d) while training, none in eval; a negative alpha is a config error."""
    recipe = _train(SFT, tmp_path, "--+neftune.noise_alpha=5.0", steps=1)
    embed = recipe.unwrapped.get_input_embeddings()
    ids = torch.arange(24).reshape(2, 12) % embed.num_embeddings
    clean = torch.nn.functional.embedding(ids, embed.weight.detach())
    embed.train()
    noisy = embed(ids).detach()
    bound = 5.0 / (12 * embed.embedding_dim) ** 0.5
    assert 0.5 * bound < (noisy - clean).abs().max() <= bound
    embed.eval()
    assert torch.equal(embed(ids).detach(), clean)
    with pytest.raises(ConfigError, match=r"neftune\.noise_alpha: expected a number >= 0"):
        _train(SFT, tmp_path / "bad", "--+neftune.noise_alpha=-1", steps=1)


def test_embedding_row_repair_fixes_a_checkpoints_dead_rows_before_training(tmp_path, caplog):
    """`embedding_row_repair:` (NeMo AutoModel's section, same keys): the zeroed rows of a
    checkpoint's input embedding are what `repair_embedding_rows` makes of them when the recipe
    starts, and a tied head (nothing to repair from) is a config error before any step."""
    import yaml
    from transformers import AutoConfig

    from automodel.core.models import AutoModelForCausalLM, repair_embedding_rows

    config = AutoConfig.from_pretrained(REPO / "examples/llm_finetune/assets/tiny_llama")
    config.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_config(config, seed=5)
    with torch.no_grad():
        model.get_input_embeddings().weight[[3, 40]] = 0
    model.save_pretrained(tmp_path / "damaged")
    expected = AutoModelForCausalLM.from_pretrained(tmp_path / "damaged")
    assert repair_embedding_rows(expected).row_ids == (3, 40)
    data = yaml.safe_load(SFT.read_text())
    data["model"] = {
        "_target_": "automodel.core.models.AutoModelForCausalLM.from_pretrained",
        "pretrained_model_name_or_path": str(tmp_path / "damaged"),
    }
    data["embedding_row_repair"] = {"min_norm": 1.0e-4, "max_rows": 256}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    recipe = FinetuneRecipeForCausalLM(load_config(tmp_path / "cfg.yaml", _short(tmp_path)))
    with caplog.at_level("WARNING", logger="automodel.recipes"):
        recipe.setup()
    assert "2 input-embedding row(s) repaired from the LM head (token ids [3, 40])" in caplog.text
    ours = recipe.unwrapped.get_input_embeddings().weight
    assert torch.equal(ours, expected.get_input_embeddings().weight)
    assert not ours[config.pad_token_id].any()  # the padding row stays zero, as designed
    with pytest.raises(ConfigError, match=r"embedding_row_repair: the LM head is tied"):
        _train(SFT, tmp_path / "tied", "--+embedding_row_repair.min_norm=10.0", steps=1)
    # docs/llm_recipe.md's command: an untied random model has nothing to repair
    caplog.clear()
    with caplog.at_level("INFO", logger="automodel.recipes"):
        untied = ["--+model.tie_word_embeddings=false", "--+embedding_row_repair.min_norm=1e-4"]
        recipe = _train(SFT, tmp_path / "untied", *untied, steps=1)
    assert "embedding_row_repair: no input-embedding row of norm <= 0.0001" in caplog.text
    assert recipe.unwrapped.lm_head.weight is not recipe.unwrapped.get_input_embeddings().weight


def test_tool_calls_example_trains_on_the_assistant_calls(tmp_path, monkeypatch_module):
    """examples/llm_finetune/tiny_tool_calls.yaml: function-calling traces (ShareGPT layout,
    tools column) train; the loss is on what the assistant writes (its call and its answer),
    not on the tools, the user's turn or the tool's result."""
    from automodel.core.data import IGNORE_INDEX

    recipe = _train(REPO / "examples/llm_finetune/tiny_tool_calls.yaml", tmp_path, steps=2)
    sample = recipe.train_set[0]
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    learned = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    row = json.loads(
        (REPO / "examples/llm_finetune/assets/tool_calls_train.jsonl").read_text().splitlines()[0]
    )
    words = row["conversations"][0]["value"].removeprefix("reverse ")
    answer = row["conversations"][3]["value"]
    decode = recipe.tokenizer.decode
    assert decode(learned) == f"reverse {words} <|end|> {answer} <|end|>"
    assert decode(ids).count(answer) == 2  # the tool's result too, unlabeled
    assert [r["step"] for r in _rows(tmp_path / "validation.jsonl")] == [0, 2]


# docs/llm_recipe.md's random rows in place of the example's data
SYNTHETIC = (
    "--dataset._target_=automodel.core.data.synthetic_text_dataset", "--~dataset.path",
    "--+dataset.num_samples=64", "--dataset.seq_length=48", "--~validation_dataset",
)  # fmt: skip


def test_synthetic_rows_fine_tune_without_data(tmp_path, monkeypatch_module):
    """synthetic_text_dataset in place of tiny_sft.yaml's data: 48-token rows (47 targets each,
    32 rows a step), no validation."""
    recipe = _train(SFT, tmp_path, *SYNTHETIC, steps=3)
    assert type(recipe.train_set).__name__ == "SyntheticTextRows" and recipe.val_loader is None
    rows = _rows(tmp_path / "training.jsonl")
    assert [r["num_label_tokens"] for r in rows] == [32 * 47] * 3
    assert (tmp_path / "validation.jsonl").read_text() == ""  # no validation rows


def test_fp8_settings_are_checked_before_the_model_loads(monkeypatch_module, capsys):
    """`fp8:` is read by the pre-flight checks (`automodel validate` too), not at model build."""
    assert main(["--validate-only", "-c", str(SFT), "--+fp8.recipe=bogus"]) == 2
    assert "fp8.recipe: expected one of tensorwise" in capsys.readouterr().err
