"""Retrieval recipes: finetune.bi_encoder and finetune.cross_encoder train, validate, resume,
run on 2 ranks like 1 process, and save folders sentence-transformers loads with our outputs;
mine.hard_negatives writes the next run's training rows."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from _shared import REPO
from safetensors.torch import load_file

from automodel.core.data import (
    DataError,
    TextCollator,
    retrieval_dataset,
    retrieval_eval_set,
)

ASSETS = REPO / "examples/retrieval/assets"
BI = REPO / "examples/retrieval/tiny_bi_encoder.yaml"
CROSS = REPO / "examples/retrieval/tiny_cross_encoder.yaml"
MINE = REPO / "examples/retrieval/mine_hard_negatives.yaml"
STEPS, MIDDLE = 6, 3
NO_DROPOUT = ["--+model.hidden_dropout_prob=0.0", "--+model.attention_probs_dropout_prob=0.0"]
TEXTS = ["Who leads Halenth today?", "which town sells copper abroad, and to whom does it sell it?"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, head_of_asset) -> Path:
    """96 training rows; 24 held-out queries over the whole held-out corpus, with candidates."""
    root = tmp_path_factory.mktemp("retrieval_data")
    head_of_asset("train.jsonl", root / "train.jsonl", 96, ASSETS)
    head_of_asset("validation.jsonl", root / "validation.jsonl", 24, ASSETS)
    return root


def overrides(run_dir: Path, data: Path, *extra: str) -> list[str]:
    """6 steps of global batch 8 (local 4: two micro-batches), validation and a checkpoint at
    steps 3 and 6, no dropout (2 ranks draw other masks than 1 process)."""
    return [
        "--step_scheduler.global_batch_size=8",
        "--step_scheduler.local_batch_size=4",
        f"--step_scheduler.max_steps={STEPS}",
        f"--step_scheduler.val_every_steps={MIDDLE}",
        f"--step_scheduler.ckpt_every_steps={MIDDLE}",
        "--step_scheduler.log_every_steps=1",
        f"--dataset.path={data / 'train.jsonl'}",
        f"--validation_dataset.path={data / 'validation.jsonl'}",
        f"--logging.run_dir={run_dir}",
        f"--checkpoint.checkpoint_dir={run_dir}/checkpoints",
        "--logging.progress=false",
        "--lr_scheduler.warmup_steps=1",
        *NO_DROPOUT,
        *extra,
    ]


def run_in_process(config: Path, overrides: list[str]) -> Any:
    """The recipe of `config` set up and trained in this process; the recipe."""
    from automodel.core.config import load_config
    from automodel.recipes.retrieval import bi_encoder, cross_encoder

    module = bi_encoder if config == BI else cross_encoder
    cls = module.BiEncoderRecipe if config == BI else module.CrossEncoderRecipe
    recipe = cls(load_config(config, overrides, sections=module.SECTIONS))
    recipe.setup()
    recipe.run_train_validation_loop()
    return recipe


@pytest.fixture(scope="module")
def bi_run(tmp_path_factory, data, monkeypatch_module) -> tuple[Path, Any]:
    run_dir = tmp_path_factory.mktemp("bi_one")
    return run_dir, run_in_process(BI, overrides(run_dir, data))


def our_embeddings(recipe: Any, texts: list[str], passage: bool) -> torch.Tensor:
    options = recipe.options
    prefix = options.passage_prefix if passage else options.query_prefix
    length = options.passage_max_length if passage else options.query_max_length
    batch = TextCollator(recipe.tokenizer, length, prefix)(texts)
    encoder = recipe.model.eval()
    with torch.no_grad():
        return encoder(None, batch)[1] if passage else encoder(batch)[0]


def test_bi_encoder_trains_validates_and_saves_a_sentence_transformers_folder(bi_run):
    """A row per step, retrieval metrics at steps 0, 3 and 6, and a checkpoint that
    sentence-transformers loads (with our prompts) and that embeds exactly as we do."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    run_dir, recipe = bi_run
    rows = [json.loads(line) for line in (run_dir / "training.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["num_label_tokens"] == 8 for r in rows)  # queries of the global batch
    val = [json.loads(line) for line in (run_dir / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in val] == [0, MIDDLE, STEPS]
    for r in val:
        assert r["num_label_tokens"] == 24
        assert {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"} <= r.keys()
        assert 0 <= r["recall@1"] <= r["recall@5"] <= r["recall@10"] <= 1
    assert val[-1]["loss"] < val[0]["loss"]
    folder = run_dir / f"checkpoints/epoch_0_step_{STEPS}/model"
    model = SentenceTransformer(str(folder), device="cpu")
    assert model.prompts["query"] == recipe.options.query_prefix
    queries = model.encode_query(TEXTS, convert_to_tensor=True)
    passages = model.encode_document(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(queries, our_embeddings(recipe, TEXTS, passage=False))
    torch.testing.assert_close(passages, our_embeddings(recipe, TEXTS, passage=True))
    assert not torch.allclose(queries, passages)  # the prefixes differ
    plain = AutoModel.from_pretrained(folder)  # and the plain HF model files
    ours = recipe.unwrapped.state_dict()
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(tensor, ours[name], msg=name)


def test_bi_encoder_resumes_exactly_from_its_middle_checkpoint(
    bi_run, data, tmp_path, monkeypatch_module, resume_dir_from
):
    reference, _ = bi_run
    resume_dir_from(reference, tmp_path, MIDDLE)
    run_in_process(BI, overrides(tmp_path, data, "--checkpoint.restore_from=latest"))
    rows = [json.loads(line) for line in (tmp_path / "training.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (reference / "training.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref]
    final = f"checkpoints/epoch_0_step_{STEPS}/model/model.safetensors"
    ours, theirs = load_file(tmp_path / final), load_file(reference / final)
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=0, msg=name)


def test_separate_towers_train_apart_resume_and_load_as_a_sentence_transformers_router(
    data, tmp_path, monkeypatch_module, resume_dir_from
):
    """Two towers from the same start drift apart; the checkpoint is one HF folder per tower
    under a Router that sentence-transformers loads (encode_query: the query tower,
    encode_document: the passage tower), that mining loads alike, and that resumes exactly."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from automodel.recipes.retrieval._embedding_model import load_embedding_model

    towers = "--+bi_encoder.separate_towers=true"
    run_dir = tmp_path / "one"
    recipe = run_in_process(BI, overrides(run_dir, data, towers))
    query_tower, passage_tower = recipe.unwrapped.query_model, recipe.unwrapped.passage_model
    assert not torch.equal(
        query_tower.embeddings.word_embeddings.weight,
        passage_tower.embeddings.word_embeddings.weight,
    )
    folder = run_dir / f"checkpoints/epoch_0_step_{STEPS}/model"
    model = SentenceTransformer(str(folder), device="cpu")
    queries = model.encode_query(TEXTS, convert_to_tensor=True)
    passages = model.encode_document(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(queries, our_embeddings(recipe, TEXTS, passage=False))
    torch.testing.assert_close(passages, our_embeddings(recipe, TEXTS, passage=True))
    for name, tower in (("query_model", query_tower), ("passage_model", passage_tower)):
        plain = AutoModel.from_pretrained(folder / name).state_dict()
        for key, tensor in tower.state_dict().items():
            torch.testing.assert_close(plain[key], tensor, msg=f"{name}.{key}")
    mined = load_embedding_model(run_dir / "checkpoints").encoder.eval()
    batch = TextCollator(recipe.tokenizer, 64, recipe.options.passage_prefix)(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(mined(None, batch)[1], passages)

    resume_dir_from(run_dir, tmp_path / "two", MIDDLE)
    run_in_process(
        BI, overrides(tmp_path / "two", data, towers, "--checkpoint.restore_from=latest")
    )
    losses = [
        [json.loads(line)["loss"] for line in (d / "training.jsonl").read_text().splitlines()]
        for d in (run_dir, tmp_path / "two")
    ]
    assert losses[0] == losses[1]


def test_separate_towers_refuse_lora(data, tmp_path):
    from automodel.core.config import load_config
    from automodel.recipes.retrieval import bi_encoder

    peft = ["--+peft._target_=automodel.peft.LoraConfig", "--+peft.match_all_linear=true"]
    args = overrides(tmp_path, data, "--+bi_encoder.separate_towers=true", *peft)
    cfg = load_config(BI, args, sections=bi_encoder.SECTIONS)
    with pytest.raises(Exception, match=r"bi_encoder\.separate_towers.*LoRA adapters are saved"):
        bi_encoder.check(cfg)


LAYOUTS = {"fsdp2": ["--distributed.strategy=fsdp2"], "ddp": ["--distributed.strategy=ddp"]}


@pytest.fixture(scope="module")
def launched(tmp_path_factory, data, run_cli, run_once_per_layout):
    """`launched(layout)`: (run dir, stderr) of the bi-encoder on 2 processes, once per layout."""

    def launch(run_dir: Path, layout: str) -> str:
        return run_cli(
            BI, overrides(run_dir, data, *LAYOUTS[layout]), recipe=("finetune", "bi_encoder")
        )

    return run_once_per_layout(tmp_path_factory, "bi", launch)


@pytest.fixture(scope="module")
def whole_batch_run(tmp_path_factory, data, monkeypatch_module) -> Path:
    """One process, each step's 8 queries in one micro-batch (their in-batch negatives)."""
    run_dir = tmp_path_factory.mktemp("bi_whole")
    run_in_process(BI, overrides(run_dir, data, "--step_scheduler.local_batch_size=8"))
    return run_dir


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_ranks_with_gathered_negatives_train_as_one_process(
    layout, launched, whole_batch_run, assert_same_training
):
    """Each rank's 4 queries score every rank's passages (gathered with their gradients), so 2
    ranks give the losses, norms, validation and weights of one process whose micro-batch is
    the whole step's 8 queries."""
    run_dir, stderr = launched(layout)
    assert f"data parallel: {layout} over 2 process(es)" in stderr
    # Adam turns the gathered sums' float rounding into single weights ~3e-5 apart
    assert_same_training(run_dir, whole_batch_run, range(1, STEPS + 1), MIDDLE, weight_atol=1e-4)
    val = [json.loads(line) for line in (run_dir / "validation.jsonl").read_text().splitlines()]
    ref = [
        json.loads(line) for line in (whole_batch_run / "validation.jsonl").read_text().splitlines()
    ]
    for a, b in zip(val, ref, strict=True):
        assert a["mrr@10"] == pytest.approx(b["mrr@10"], abs=1e-6)


def test_lora_saves_an_adapter_peft_loads_with_our_embeddings(data, tmp_path, monkeypatch_module):
    from peft import PeftModel

    from automodel.core.models import AutoModel, BiEncoder

    peft = ["--+peft._target_=automodel.peft.LoraConfig", "--+peft.match_all_linear=true"]
    recipe = run_in_process(BI, overrides(tmp_path, data, "--+peft.dim=4", *peft))
    trained = {n for n, p in recipe.unwrapped.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n for n in trained)
    folder = tmp_path / f"checkpoints/epoch_0_step_{STEPS}/model"
    base = AutoModel.from_config(ASSETS / "tiny_bert/config.json", seed=1234)
    loaded = BiEncoder(PeftModel.from_pretrained(base, folder).eval())
    batch = TextCollator(recipe.tokenizer, 32)(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch)[0], recipe.model.eval()(batch)[0])


@pytest.fixture(scope="module")
def cross_run(tmp_path_factory, data, monkeypatch_module) -> tuple[Path, Any]:
    run_dir = tmp_path_factory.mktemp("cross_one")
    return run_dir, run_in_process(CROSS, overrides(run_dir, data))


def test_cross_encoder_reranks_candidates_and_saves_a_folder_cross_encoder_loads(cross_run):
    from sentence_transformers import CrossEncoder

    from automodel.core.data import CrossEncoderCollator

    run_dir, recipe = cross_run
    val = [json.loads(line) for line in (run_dir / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in val] == [0, MIDDLE, STEPS]
    assert all(r["num_label_tokens"] == 24 and 0 <= r["mrr@10"] <= 1 for r in val)
    assert val[-1]["loss"] < val[0]["loss"]
    folder = run_dir / f"checkpoints/epoch_0_step_{STEPS}/model"
    reranker = CrossEncoder(str(folder), device="cpu")
    pairs = [(TEXTS[0], TEXTS[1]), (TEXTS[1], TEXTS[0])]
    theirs = reranker.predict(pairs, activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    batch = CrossEncoderCollator(recipe.tokenizer, recipe.tokenizer.model_max_length)
    with torch.no_grad():
        ours = recipe.model.eval()(**batch.pairs(*zip(*pairs, strict=True))).logits.squeeze(-1)
    torch.testing.assert_close(theirs, ours)
    assert reranker.max_length == recipe.tokenizer.model_max_length


def test_a_reranker_needs_candidates_to_validate(data, tmp_path, monkeypatch_module):
    from automodel.core.config import ConfigError

    bare = tmp_path / "queries.jsonl"
    rows = [json.loads(line) for line in (data / "validation.jsonl").read_text().splitlines()]
    bare.write_text("".join(json.dumps({"query": r["query"], "pos_ids": r["pos_ids"]}) + "\n" for r in rows))  # fmt: skip
    with pytest.raises(ConfigError, match="give each row `neg_ids` beside `pos_ids`"):
        run_in_process(CROSS, overrides(tmp_path, data, f"--validation_dataset.path={bare}"))


def mine(tmp_path: Path, model: Path, *extra: str) -> tuple[Path, list[dict]]:
    from automodel.recipes.retrieval.mine import main

    output = tmp_path / "mined.jsonl"
    args = [f"--mining.model={model}", f"--mining.output={output}", *extra]
    assert main(["-c", str(MINE), *args]) == 0
    return output, [json.loads(line) for line in output.read_text().splitlines()]


def test_mining_keeps_the_top_scored_non_positives_below_the_margin(bi_run, tmp_path, caplog):
    """Every query's negatives are its best-scored passages that are neither positives nor
    within the margin of them; faiss finds the same; a second run reuses the cached corpus."""
    from automodel.recipes.retrieval._embedding_model import load_embedding_model

    checkpoints = bi_run[0] / "checkpoints"
    margin = ["--mining.num_negatives=3", "--mining.top_k=20", "--mining.margin=0.95"]
    output, rows = mine(tmp_path, checkpoints, *margin)
    queries = [json.loads(line) for line in (ASSETS / "train_queries.jsonl").read_text().splitlines()]  # fmt: skip
    assert len(rows) <= len(queries) and rows
    corpus = [json.loads(line) for line in (ASSETS / "corpus.jsonl").read_text().splitlines()]
    text = {doc["id"]: doc["text"] for doc in corpus}
    model = load_embedding_model(checkpoints)
    model.encoder.eval()
    for row in rows[:40]:
        assert 1 <= len(row["neg_ids"]) <= 3 and not set(row["neg_ids"]) & set(row["pos_ids"])
        assert row["neg_scores"] == sorted(row["neg_scores"], reverse=True)
        with torch.no_grad():
            q = model.encoder(TextCollator(model.tokenizer, 512, model.query_prefix)([row["query"]]))[0]  # fmt: skip
            passages = [text[i] for i in [*row["pos_ids"], *row["neg_ids"]]]
            p = model.encoder(None, TextCollator(model.tokenizer, 512, model.passage_prefix)(passages))[1]  # fmt: skip
        scores = (q @ p.T)[0]
        positive = scores[: len(row["pos_ids"])].min()
        negatives = scores[len(row["pos_ids"]) :]
        torch.testing.assert_close(negatives, torch.tensor(row["neg_scores"]), atol=1e-5, rtol=0)
        assert (negatives < 0.95 * positive).all()
    cache = next((tmp_path / "mined.jsonl.cache").glob("corpus-*.npy"))
    stamp = cache.stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        _, again = mine(tmp_path, checkpoints, *margin, "--mining.overwrite=true",
                        "--mining.search=faiss")  # fmt: skip
    assert "corpus embeddings from the cache" in caplog.text and cache.stat().st_mtime_ns == stamp
    assert [r["neg_ids"] for r in again] == [r["neg_ids"] for r in rows]
    # without a margin: the best-scored non-positives, however close to the positive
    _, unfiltered = mine(tmp_path, checkpoints, *margin, "--mining.overwrite=true",
                         "--mining.margin=null")  # fmt: skip
    assert len(unfiltered) == len(queries)
    kept = {r["query"]: r["neg_scores"] for r in rows}
    closer = 0
    for row in unfiltered:
        if row["query"] in kept:
            assert all(a >= b for a, b in zip(row["neg_scores"], kept[row["query"]], strict=False))
            closer += row["neg_scores"] != kept[row["query"]]
    assert closer  # some candidates were within the margin and are negatives now
    mined = retrieval_dataset(output, corpus=ASSETS / "corpus.jsonl", num_negatives=3)
    assert len(mined[0]["passages"]) == 4  # what the next run trains on


def test_mining_refuses_to_overwrite_and_reads_any_sentence_transformers_folder(tmp_path):
    from sentence_transformers import SentenceTransformer, models

    from automodel.core.config import ConfigError, load_config
    from automodel.core.models import AutoModel
    from automodel.recipes.retrieval import mine as mining

    backbone = tmp_path / "backbone"
    AutoModel.from_config(ASSETS / "tiny_bert/config.json", seed=0).save_pretrained(backbone)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(ASSETS / "tokenizer").save_pretrained(backbone)
    transformer = models.Transformer(str(backbone), max_seq_length=64)
    cls = models.Pooling(transformer.get_word_embedding_dimension(), "cls")
    st = SentenceTransformer(modules=[transformer, cls], device="cpu")
    st.save(str(tmp_path / "st"))
    output, rows = mine(tmp_path, tmp_path / "st", "--mining.min_negatives=0",
                        "--mining.margin_type=absolute", "--mining.margin=0.0")  # fmt: skip
    assert len(rows) == len((ASSETS / "train_queries.jsonl").read_text().splitlines())
    from automodel.recipes.retrieval._embedding_model import load_embedding_model

    loaded = load_embedding_model(tmp_path / "st")
    assert loaded.encoder.pooling == "cls" and not loaded.encoder.normalize
    with torch.no_grad():
        ours = loaded.encoder(TextCollator(loaded.tokenizer, 64)(TEXTS))[0]
    torch.testing.assert_close(ours, st.encode(TEXTS, convert_to_tensor=True))
    cfg = load_config(MINE, [f"--mining.output={output}"], sections=mining.SECTIONS)
    with pytest.raises(ConfigError, match=r"exists; set mining\.overwrite: true"):
        mining.check(cfg)


def test_decoder_backbones_embed_bidirectionally_and_load_in_sentence_transformers(
    tmp_path, tiny_llama_config
):
    """A Llama made bidirectional: an early token's state depends on later ones; last-token
    pooling reads each row's last real token; the saved folder (is_causal false in its
    config.json) gives sentence-transformers our embeddings."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from automodel.core.models import AutoModel, BiEncoder, bidirectional
    from automodel.recipes.retrieval._sentence_transformers import SentenceTransformerFiles

    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tokenizer")
    config = tiny_llama_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    backbone = bidirectional(AutoModel.from_config(config, seed=0)).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        first = backbone(ids).last_hidden_state[0, 0]
        changed = backbone(torch.tensor([[5, 6, 7, 9]])).last_hidden_state[0, 0]
    assert not torch.allclose(first, changed)
    encoder = BiEncoder(backbone, pooling="last", normalize=False)
    batch = {"input_ids": torch.tensor([[5, 6, 7, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0]])}  # fmt: skip
    with torch.no_grad():
        hidden = backbone(**batch).last_hidden_state
        torch.testing.assert_close(encoder(batch)[0], hidden[:, 2])  # the last real token
    folder = tmp_path / "decoder"
    backbone.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    SentenceTransformerFiles(backbone.config.hidden_size, "last", False, 64).save_pretrained(folder)
    model = SentenceTransformer(str(folder), device="cpu")
    batch = TextCollator(tokenizer, 64)(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(TEXTS, convert_to_tensor=True), encoder(batch)[0])


def test_inline_and_corpus_id_rows_give_the_same_items(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    docs = {"a": "alpha text", "b": "beta text", "c": "gamma text", "7": "delta text"}
    corpus.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))
    inline = tmp_path / "inline.jsonl"
    inline.write_text(
        json.dumps({"question": "q0", "pos_doc": "alpha text", "neg_doc": ["beta text", "gamma text"]}) + "\n"
        + json.dumps({"query": "q1", "pos_doc": ["delta text"], "neg_doc": "beta text"}) + "\n"
    )  # fmt: skip
    by_id = tmp_path / "ids.jsonl"
    by_id.write_text(
        json.dumps({"question": "q0", "pos_ids": ["a"], "neg_ids": ["b", {"id": "c"}]}) + "\n"
        + json.dumps({"query": "q1", "pos_ids": [7], "neg_ids": ["b"]}) + "\n"
    )  # fmt: skip
    a = retrieval_dataset(inline, num_negatives=2, seed=3)
    b = retrieval_dataset(by_id, corpus=corpus, num_negatives=2, seed=3)
    assert [a[i] for i in range(2)] == [b[i] for i in range(2)]
    assert a[1]["passages"] == ["delta text", "beta text", "beta text"]  # one negative, cycled
    assert sorted(a[0]["passages"][1:]) == ["beta text", "gamma text"]
    firsts = retrieval_dataset(by_id, corpus=corpus, num_negatives=1, sample_negatives=False)
    assert [firsts[i]["passages"] for i in range(2)] == [["alpha text", "beta text"], ["delta text", "beta text"]]  # fmt: skip
    sampled = {tuple(retrieval_dataset(inline, num_negatives=1, seed=s)[0]["passages"]) for s in range(8)}  # fmt: skip
    assert len(sampled) == 2  # the seed picks among the row's negatives
    evaluation = retrieval_eval_set(by_id, corpus)
    assert evaluation.relevant == [{0}, {3}] and evaluation.candidates == [[0, 1, 2], [3, 1]]


def test_bad_rows_are_named_with_their_row_and_id(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "alpha"}) + "\n")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"query": "q", "pos_ids": ["a"], "neg_ids": ["a"]}) + "\n"
                    + json.dumps({"query": "q", "pos_ids": ["a"], "neg_ids": ["zz"]}) + "\n")  # fmt: skip
    with pytest.raises(DataError, match=r"row 1: 'neg_ids' names the id 'zz', which is not in the corpus"):  # fmt: skip
        retrieval_dataset(rows, corpus=corpus)
    with pytest.raises(DataError, match=r"row 0: 'pos_ids' holds document ids but no corpus is given"):  # fmt: skip
        retrieval_dataset(rows)
    rows.write_text(json.dumps({"text": "q", "pos_doc": "p"}) + "\n")
    with pytest.raises(DataError, match=r"no 'query' or 'question' column; the rows have text, pos_doc"):  # fmt: skip
        retrieval_dataset(rows, num_negatives=0)
    rows.write_text(json.dumps({"query": "q", "pos_doc": "p", "neg_doc": []}) + "\n")
    with pytest.raises(DataError, match=r"row 0 has no negatives but num_negatives is 1; set num_negatives: 0"):  # fmt: skip
        retrieval_dataset(rows)
    assert retrieval_dataset(rows, num_negatives=0)[0] == {"query": "q", "passages": ["p"]}


@pytest.mark.parametrize("mode", ["mean", "cls", "last"])
def test_pooling_reads_only_real_tokens(mode):
    from automodel.core.models import pool

    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    out = pool(hidden, mask, mode)
    expected = {
        "mean": torch.stack([hidden[0, :3].mean(0), hidden[1, 1:].mean(0)]),
        "cls": hidden[:, 0],
        "last": torch.stack([hidden[0, 2], hidden[1, 3]]),
    }[mode]
    torch.testing.assert_close(out, expected)
