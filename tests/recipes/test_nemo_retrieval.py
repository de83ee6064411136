"""NeMo AutoModel's retrieval configs (TrainBiEncoderRecipe, TrainCrossEncoderRecipe, their
hard-negative mining) read here (docs/migrating.md): written in their schema, pointed at the
repo's retrieval assets and a tiny BERT saved from examples/retrieval/assets/tiny_bert."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from _shared import REPO

from automodel.core.config import ConfigError, load_config, validate_config
from automodel.core.config._nemo_compat import looks_like_nemo, migrate, translate
from automodel.recipes.retrieval import bi_encoder, cross_encoder, mine

ASSETS = REPO / "examples/retrieval/assets"
BI = "nemo_automodel.NeMoAutoModelBiEncoder.from_pretrained"
CROSS = "nemo_automodel.NeMoAutoModelCrossEncoder.from_pretrained"
DATASET = "nemo_automodel.components.datasets.llm.retrieval_dataset.RetrievalDatasetConfig"
INLINE_DATASET = (
    "nemo_automodel.components.datasets.llm.retrieval_dataset_inline.InlineRetrievalDatasetConfig"
)
BI_COLLATOR = "nemo_automodel.components.datasets.llm.BiEncoderCollator"
CROSS_COLLATOR = "nemo_automodel.components.datasets.llm.CrossEncoderCollator"

# Their examples/retrieval/bi_encoder/llama3_2_1b.yaml layout and key names, on local files.
THEIR_BI = """\
recipe: TrainBiEncoderRecipe

seed: 42

temperature: 0.02

step_scheduler:
  global_batch_size: 8
  local_batch_size: 4
  ckpt_every_steps: 500
  val_every_steps: 500
  max_steps: 2
  num_epochs: 1

dist_env:
  backend: nccl
  timeout_minutes: 30

model:
  _target_: nemo_automodel.NeMoAutoModelBiEncoder.from_pretrained
  pretrained_model_name_or_path: {models}/bert
  pooling: avg
  l2_normalize: true
  use_liger_kernel: true
  use_sdpa_patching: true
  torch_dtype: float32
  do_distributed_inbatch_negative: false

tokenizer:
  _target_: nemo_automodel.NeMoAutoTokenizer.from_pretrained
  pretrained_model_name_or_path: {assets}/tokenizer

dataset:
  _target_: nemo_automodel.components.datasets.llm.retrieval_dataset.RetrievalDatasetConfig
  model_type: bi_encoder
  data_dir_list:
    - {models}/train.jsonl
  data_type: train
  n_passages: 2
  seed: 42

dataloader:
  collate_fn:
    _target_: nemo_automodel.components.datasets.llm.BiEncoderCollator
    q_max_len: 32
    p_max_len: 64
    query_prefix: "query:"
    passage_prefix: "passage:"
    pad_to_multiple_of: 8
  shuffle: true
  num_workers: 0

optimizer:
  _target_: torch.optim.AdamW
  lr: 1.0e-4
  weight_decay: 0.01

lr_scheduler:
  lr_warmup_steps: 1
  lr_decay_style: linear

checkpoint:
  enabled: true
  checkpoint_dir: {models}/run/checkpoints
  model_save_format: safetensors
  save_consolidated: true

distributed:
  strategy: fsdp2
  dp_size: none
  tp_size: 1
  cp_size: 1
  sequence_parallel: false

ci:
  recipe_owner: someone
"""

# Their examples/retrieval/cross_encoder/llama3_2_1b.yaml layout, on a BERT reranker.
THEIR_CROSS = (
    THEIR_BI.replace("TrainBiEncoderRecipe", "TrainCrossEncoderRecipe")
    .replace("temperature: 0.02\n", "temperature: 1.0\n")
    .replace(BI, CROSS)
    .replace("{models}/bert\n", "{models}/reranker\n")
    .replace("  l2_normalize: true\n", "  num_labels: 1\n  temperature: 1.0\n")
    .replace("  do_distributed_inbatch_negative: false\n", "")
    .replace("model_type: bi_encoder", "model_type: cross_encoder")
    .replace(
        """    _target_: nemo_automodel.components.datasets.llm.BiEncoderCollator
    q_max_len: 32
    p_max_len: 64
    query_prefix: "query:"
    passage_prefix: "passage:"
""",
        """    _target_: nemo_automodel.components.datasets.llm.CrossEncoderCollator
    rerank_max_length: 96
    prompt_template: "question:{{query}} \\n \\n passage:{{passage}}"
""",
    )
)

# Their examples/retrieval/data_utils/mining_config.yaml keys (it names no recipe), with our
# queries and corpus in place of their corpus-id train_qa_file_path.
THEIR_MINING = """\
dist_env:
  backend: nccl
  timeout_minutes: 30
mining:
  model_name_or_path: {models}/bert
  queries: {assets}/train_queries.jsonl
  corpus: {assets}/corpus.jsonl
  train_file_output_path: {models}/mined.jsonl
  load_embeddings_from_cache: false
  hard_negatives_to_mine: 3
  hard_neg_margin: 0.9
  hard_neg_margin_type: abs
  mining_batch_size: 128
  query_embedding_batch_size: 16
  document_embedding_batch_size: 16
  corpus_chunk_size: 50000
  query_prefix: ""
  passage_prefix: ""
  query_max_length: 512
  passage_max_length: 512
  use_negatives_from_file: false
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A tiny BERT and a one-output BERT reranker (saved from the repo's config, random
    weights: their model target is from_pretrained of a folder), and 64 training rows."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("nemo_retrieval")
    config = AutoConfig.from_pretrained(ASSETS / "tiny_bert/config.json")
    AutoModel.from_config(config).save_pretrained(root / "bert")
    config.num_labels = 1
    AutoModelForSequenceClassification.from_config(config).save_pretrained(root / "reranker")
    rows = (ASSETS / "train.jsonl").read_text().splitlines(keepends=True)[:64]
    (root / "train.jsonl").write_text("".join(rows))
    return root


def their_file(models: Path, text: str, name: str) -> Path:
    path = models / name
    path.write_text(text.format(models=models, assets=ASSETS))
    return path


def bi(**model: Any) -> dict[str, Any]:
    """Their bi-encoder config as data: the model's arguments, one inline JSONL file."""
    return {
        "recipe": "TrainBiEncoderRecipe",
        "model": {"_target_": BI, "pretrained_model_name_or_path": "m", **model},
        "dataset": {"_target_": DATASET, "data_dir_list": "rows.jsonl", "n_passages": 3},
    }


def problems(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        translate(data, {}, "cfg.yaml")
    return str(err.value)


def test_their_bi_encoder_config_translates_and_passes_check(models: Path) -> None:
    from automodel.cli._app import main

    theirs = their_file(models, THEIR_BI, "bi.yaml")
    cfg = load_config(theirs, sections=bi_encoder.SECTIONS)
    validate_config(cfg, bi_encoder.SECTIONS)
    options = bi_encoder.check(cfg)
    assert (options.pooling, options.normalize, options.bidirectional) == ("mean", True, True)
    assert options.temperature == 0.02
    assert (options.query_max_length, options.passage_max_length) == (32, 64)
    assert (options.query_prefix, options.passage_prefix) == ("query: ", "passage: ")
    assert not options.in_batch_negatives and not options.gather_across_ranks
    assert cfg.model._target_ == "automodel.core.models.AutoModel.from_pretrained"
    assert cfg.dataset.to_dict() == {
        "_target_": "automodel.core.data.retrieval_dataset",
        "path": str(models / "train.jsonl"),
        "num_negatives": 1,  # n_passages: 2
        "sample_negatives": False,  # their first n_passages - 1 negatives
        "seed": 42,
    }
    assert "collate_fn" not in cfg.dataloader and "recipe" not in cfg
    line = THEIR_BI.splitlines().index("temperature: 0.02") + 1
    assert cfg.where("bi_encoder.temperature") == f"{theirs}:{line}"
    assert main(["validate", str(theirs)]) == 0  # their command line: routed by recipe:
    assert "nemo_automodel" not in sys.modules


def test_their_bi_encoder_config_runs_and_migrates(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`automodel migrate` writes the same config in our spelling; two steps of it train."""
    theirs = their_file(models, THEIR_BI, "bi_run.yaml")
    text = migrate(str(theirs))
    assert "automodel finetune bi_encoder" in text
    assert "query_prefix: 'query: '  # was dataloader.collate_fn.query_prefix" in text
    code = [line.split("#")[0] for line in text.splitlines()]
    assert not any("nemo_automodel" in c for c in code)
    ours = tmp_path / "ours.yaml"
    ours.write_text(text)
    overrides = [f"--+logging.run_dir={tmp_path / 'run'}", "--+logging.progress=false"]
    cfg = load_config(theirs, overrides, sections=bi_encoder.SECTIONS)
    migrated = load_config(ours, overrides, sections=bi_encoder.SECTIONS)
    assert migrated.to_dict() == cfg.to_dict()
    monkeypatch.setenv("WORLD_SIZE", "1")
    recipe = bi_encoder.BiEncoderRecipe(cfg)
    recipe.setup()
    recipe.run_train_validation_loop()
    rows = [json.loads(r) for r in (tmp_path / "run/training.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["num_label_tokens"] == 8 and r["loss"] > 0 for r in rows)


def test_their_submodel_of_a_vlm_trains_alone_and_saves_as_its_own_model(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`extract_submodel: language_model` (their Ministral-3 embedder): a LLaVA is loaded, its
    Llama language model trains as the bi-encoder and is what the checkpoint holds."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(REPO / "examples/vlm_finetune/assets/tiny_llava")
    config.text_config.vocab_size = 460  # the retrieval tokenizer's
    AutoModel.from_config(config).save_pretrained(tmp_path / "llava")
    text = THEIR_BI.replace("{models}/bert", str(tmp_path / "llava"))
    text = text.replace("  pooling: avg\n", "  pooling: avg\n  extract_submodel: language_model\n")
    theirs = their_file(models, text, "bi_submodel.yaml")
    overrides = [f"--+logging.run_dir={tmp_path / 'run'}", "--+logging.progress=false"]
    overrides.append(f"--checkpoint.checkpoint_dir={tmp_path / 'run/checkpoints'}")
    cfg = load_config(theirs, overrides, sections=bi_encoder.SECTIONS)
    assert cfg.model.submodel == "language_model"
    monkeypatch.setenv("WORLD_SIZE", "1")
    recipe = bi_encoder.BiEncoderRecipe(cfg)
    recipe.setup()
    recipe.run_train_validation_loop()
    assert type(recipe.unwrapped).__name__ == "LlamaModel"
    (saved,) = (tmp_path / "run/checkpoints").glob("epoch_0_step_2/model/config.json")
    assert json.loads(saved.read_text())["model_type"] == "llama"  # the part, on its own
    with pytest.raises(
        Exception, match=r"submodel 'vision' of LlavaModel: no such part.*language_model"
    ):
        from automodel.core.models import AutoModel as Ours

        Ours.from_pretrained(tmp_path / "llava", submodel="vision")


def test_their_cross_encoder_config_translates_and_passes_check(models: Path) -> None:
    theirs = their_file(models, THEIR_CROSS, "cross.yaml")
    cfg = load_config(theirs, sections=cross_encoder.SECTIONS)
    validate_config(cfg, cross_encoder.SECTIONS)
    assert cross_encoder.check(cfg).max_length == 96
    assert cfg.model.to_dict() == {
        "_target_": "automodel.core.models.AutoModelForSequenceClassification.from_pretrained",
        "pretrained_model_name_or_path": str(models / "reranker"),
        "num_labels": 1,
        "torch_dtype": "float32",
    }
    assert cfg.dataset.num_negatives == 1 and "temperature" not in cfg
    t = translate(cfg_data(theirs), {}, str(theirs))
    notes = "\n".join(t.notes)
    assert "pooling and temperature dropped" in notes  # a BERT: theirs ignores them too
    assert "as a text pair" in notes  # their prompt template vs our pair encoding
    assert "does not read it" in notes  # the top-level temperature


def cfg_data(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


def test_retrieval_values_follow_their_defaults() -> None:
    """What their classes default to is written out where ours differs."""
    gather = {
        "do_distributed_inbatch_negative": True,
        "detach_distributed_inbatch_negatives": False,
    }
    data = bi(l2_normalize=False, **gather)
    data["temperature"] = 0.05
    data["dataset"].update(max_train_samples=16, train_data_select_offset=8, do_shuffle=True)
    t = translate(data, {}, "cfg.yaml")
    assert t.recipe == "finetune.bi_encoder"
    assert t.data["bi_encoder"] == {
        "pooling": "mean",  # their default avg
        "normalize": False,
        "bidirectional": True,
        "in_batch_negatives": True,
        "gather_across_ranks": True,
        "temperature": 1.0,  # they scale by temperature only with l2_normalize
    }
    assert t.data["dataset"] == {
        "_target_": "automodel.core.data.retrieval_dataset",
        "path": "rows.jsonl",
        "num_negatives": 2,
        "sample_negatives": False,
        "shuffle_seed": 42,
        "split": "train[8:24]",
    }
    data = bi(pooling="cls")
    del data["dataset"]["n_passages"]
    data["dataloader"] = {"collate_fn": {"_target_": BI_COLLATOR}}
    t = translate(data, {}, "cfg.yaml")
    assert t.data["dataset"]["num_negatives"] == 4  # their n_passages: 5
    options = t.data["bi_encoder"]
    assert (options["pooling"], options["temperature"]) == ("cls", 1.0)
    assert (options["query_max_length"], options["passage_max_length"]) == (512, 512)
    assert (options["query_prefix"], options["passage_prefix"]) == ("", "")
    assert "dataloader" not in t.data or "collate_fn" not in t.data["dataloader"]


def test_overrides_in_their_spelling(models: Path) -> None:
    theirs = their_file(models, THEIR_BI, "bi_over.yaml")
    overrides = ["--model.pooling", "last", "--dataset.n_passages", "3", "--temperature", "0.1"]
    cfg = load_config(theirs, overrides, sections=bi_encoder.SECTIONS)
    options = bi_encoder.check(cfg)
    assert (options.pooling, options.temperature) == ("last", 0.1)
    assert cfg.dataset.num_negatives == 2


@pytest.mark.parametrize(
    ("change", "key", "advice"),
    [
        ({"data_dir_list": ["a.jsonl", "b.csv"]}, "dataset.data_dir_list", "'b.csv': their loader"),
        (
            {"_target_": INLINE_DATASET, "data_dir_list": "hf://a/b/c"},
            "dataset.data_dir_list",
            "their inline loader reads .json or .jsonl paths",
        ),
        ({"data_type": "eval"}, "dataset.data_type", "retrieval_eval_set"),
        ({"model_type": "cross_encoder"}, "dataset.model_type", "set bi_encoder"),
    ],
)
def test_dataset_sources_we_cannot_read_are_specific_errors(change, key, advice) -> None:
    import re

    data = bi()
    data["dataset"].update(change)
    message = problems(data)
    assert f"{key}:" in message
    assert re.search(advice, message), message


def their_prepared_subset(root: Path, name: str, texts: list[str]) -> Path:
    """<name>/<name>.json as their data_preparation.py writes it: rows naming corpus ids, over
    a Merlin corpus folder whose metadata has instructions; row i's positive is text i, its
    negative text i + 1."""
    folder = root / name / "corpus"
    folder.mkdir(parents=True)
    docs = [{"id": f"{name}{i}", "text": text} for i, text in enumerate(texts)]
    (folder / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    meta = {"class": "TextQADataset", "corpus_id": name, "query_instruction": f"Find {name}:"}
    meta["passage_instruction"] = "Doc:"
    (folder / "merlin_metadata.json").write_text(json.dumps(meta))
    rows = [
        {"question_id": str(i), "question": f"q{name}{i}", "corpus_id": name,
         "pos_doc": [{"id": f"{name}{i}"}], "neg_doc": [{"id": f"{name}{(i + 1) % len(texts)}"}]}
        for i in range(len(texts))
    ]  # fmt: skip
    path = root / name / f"{name}.json"
    path.write_text(json.dumps({"data": rows, "corpus": {"path": str(folder)}}))
    return path


def test_their_several_sources_with_instructions_translate_and_read(tmp_path: Path) -> None:
    """Their llama_embed_nemotron_8b dataset node: corpus-id JSON files (data_preparation.py's
    output) and a Hub source, num_samples, use_dataset_instruction on dataset and collator."""
    import random

    import yaml

    from automodel.core.config import instantiate

    a = str(their_prepared_subset(tmp_path, "A", ["a0", "a1", "a2"]))
    b = {"path": str(their_prepared_subset(tmp_path, "B", ["b0", "b1"])), "num_samples": 1}
    data = bi()
    dataset = {"data_dir_list": [a, "hf://org/repo/Sub", b], "n_passages": 2}
    data["dataset"].update(dataset, use_dataset_instruction=True)
    data["dataloader"] = {"collate_fn": {"_target_": BI_COLLATOR, "use_dataset_instruction": True}}
    t = translate(data, {}, "cfg.yaml")
    assert t.data["dataset"] == {
        "_target_": "automodel.core.data.retrieval_dataset",
        "path": ["hf://org/repo/Sub", a, b],  # their order: Hub sources first
        "num_negatives": 1,
        "sample_negatives": False,
        "instructions": True,
        "seed": 42,  # their default draws num_samples
    }
    prefixes = t.data["bi_encoder"]["query_prefix"], t.data["bi_encoder"]["passage_prefix"]
    assert prefixes == ("", "")
    assert "reordered as their loader concatenates the sources" in "\n".join(t.notes)
    ours = {"dataset": {**t.data["dataset"], "path": [a, b]}}  # no Hub here
    (tmp_path / "ours.yaml").write_text(yaml.safe_dump(ours))
    built = instantiate(load_config(tmp_path / "ours.yaml").dataset)
    drawn = random.Random(42).sample([0, 1], 1)[0]  # their draw of B's rows
    assert [built[i] for i in range(len(built))] == [
        {"query": "Find A: qA0", "passages": ["Doc: a0", "Doc: a1"]},
        {"query": "Find A: qA1", "passages": ["Doc: a1", "Doc: a2"]},
        {"query": "Find A: qA2", "passages": ["Doc: a2", "Doc: a0"]},
        {"query": f"Find B: qB{drawn}", "passages": [f"Doc: b{drawn}", f"Doc: b{1 - drawn}"]},
    ]
    data["dataloader"] = {"collate_fn": {"_target_": BI_COLLATOR}}  # their collator ignores them
    t = translate(data, {}, "cfg.yaml")
    assert "instructions" not in t.data["dataset"]
    assert "use_dataset_instruction dropped" in "\n".join(t.notes)


def test_model_options_we_cannot_honour_are_specific_errors(tmp_path: Path) -> None:
    message = problems(bi(do_distributed_inbatch_negative=True))
    assert "model.do_distributed_inbatch_negative" in message
    assert "detach_distributed_inbatch_negatives: false" in message
    assert "use avg, cls or last" in problems(bi(pooling="weighted_avg"))
    part = translate(bi(extract_submodel="language_model"), {}, "cfg.yaml")
    assert part.data["model"]["submodel"] == "language_model"
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    data = {"model": {"_target_": CROSS, "pretrained_model_name_or_path": str(llama)}}
    message = problems(data)
    assert "model._target_" in message and "bidirectional Llama" in message
    assert "use an encoder backbone" in message
    data = {"model": {"_target_": CROSS, "pretrained_model_name_or_path": "m", "num_labels": 2}}
    assert "set 1" in problems(data)
    data["model"]["num_labels"] = 1
    template = {"rerank_max_length": 64, "prompt_template": "{query} | {passage}"}
    data["dataloader"] = {"collate_fn": {"_target_": CROSS_COLLATOR, **template}}
    assert "drop prompt_template" in problems(data)
    data = bi()
    data["validation_dataset"] = {**data["dataset"], "data_type": "eval"}
    message = problems(data)
    assert "validation_dataset._target_" in message and "retrieval_eval_set" in message


def test_typos_in_their_retrieval_names_get_suggestions() -> None:
    assert "did you mean 'l2_normalize'" in problems(bi(l2_normalise=True))
    data = bi()
    data["dataloader"] = {"collate_fn": {"_target_": BI_COLLATOR, "q_max_length": 64}}
    assert "did you mean 'q_max_len'" in problems(data)
    data = bi()
    data["dataset"]["n_passage"] = 2
    assert "did you mean 'n_passages'" in problems(data)
    data = {"mining": {"hard_negatives_to_mine": 3, "hard_neg_margn": 0.9}}
    assert "did you mean 'hard_neg_margin'" in problems(data)


def test_their_mining_config(models: Path) -> None:
    theirs = their_file(models, THEIR_MINING, "mining.yaml")
    cfg = load_config(theirs, sections=mine.SECTIONS)  # no recipe: their mining keys say it
    validate_config(cfg, mine.SECTIONS)
    options = mine.check(cfg)
    assert (options.model, options.output) == (str(models / "bert"), str(models / "mined.jsonl"))
    assert (options.num_negatives, options.min_negatives) == (3, 0)
    assert (options.margin, options.margin_type, options.chunk_size) == (0.9, "absolute", 50000)
    assert "dist_env" not in cfg and "distributed" not in cfg
    assert not looks_like_nemo({"mining": cfg.mining.to_dict()})  # ours is not theirs
    data = {
        "recipe": "MineHardNegativesRecipe",
        "mining": {"model_name_or_path": "m", "train_qa_file_path": "train.json"},
    }
    message = problems(data)
    assert "mining.train_qa_file_path" in message and "mining.queries" in message
    data["mining"] = {"model_name_or_path": "m", "use_negatives_from_file": True}
    assert "mining.use_negatives_from_file" in problems(data)
