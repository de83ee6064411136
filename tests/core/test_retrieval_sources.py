"""retrieval_dataset reads NeMo AutoModel's retrieval data as their RetrievalDatasetConfig does
(nemo_automodel/components/datasets/llm/retrieval_dataset.py): their Hub layout (a folder, or
hf:// from the Hub cache), the corpus-id JSON their data_preparation.py writes, several sources
with num_samples, and their metadata's instructions. Expected values follow their rules: the
first positive, the first n_passages - 1 negatives in order (cycled when fewer), sources
concatenated, `random.Random(seed).sample(rows, n)`, `Dataset.shuffle(seed).select(...)`,
instructions joined to the text with a space."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from automodel.core.data import DataError, retrieval_dataset

FEVER_INSTRUCTION = "Instruct: Given a claim, retrieve documents that support or refute it\nQuery:"
FEVER_DOCS = {"f1": "Paris is in France.", "f2": "Rome is in Italy.", "f3": "Oslo is cold.", "f4": "Lima is in Peru."}  # fmt: skip
FEVER_ROWS = [  # as on the Hub: ids as {"id": ...} structs; two positives in the second row
    {"question_id": "0", "question": "Paris is French.", "corpus_id": "fever",
     "pos_doc": [{"id": "f1"}], "neg_doc": [{"id": "f2"}, {"id": "f3"}, {"id": "f4"}]},
    {"question_id": "1", "question": "Rome is Italian.", "corpus_id": "fever",
     "pos_doc": [{"id": "f2"}, {"id": "f1"}], "neg_doc": [{"id": "f3"}]},
]  # fmt: skip
SYNTH_DOCS = {str(i): f"label {i}" for i in range(6)}
SYNTH_ROWS = [
    {"question_id": str(i), "question": f"text {i}", "corpus_id": "synth",
     "pos_doc": [{"id": str(i)}], "neg_doc": [{"id": str((i + 1) % 6)}, {"id": str((i + 2) % 6)}]}
    for i in range(6)
]  # fmt: skip
SYNTH_META = {"query_instruction": "Classify the text:", "passage_instruction": "Label:"}


def parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def subset(root: Path, name: str, corpus_id: str, docs: dict, rows: list, **meta) -> Path:
    """One subset in their Hub layout: dataset_metadata.json, corpus.parquet, queries.parquet."""
    folder = root / name
    parquet(folder / "corpus.parquet", [{"id": k, "text": v} for k, v in docs.items()])
    parquet(folder / "queries.parquet", rows)
    metadata = {"corpus_id": corpus_id, "class": "TextQADataset", "ids_only": False, **meta}
    (folder / "dataset_metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    """A local copy of a dataset repo in their layout with two subsets."""
    root = tmp_path / "embed-data"
    subset(root, "FEVER", "fever", FEVER_DOCS, FEVER_ROWS, query_instruction=FEVER_INSTRUCTION)
    subset(root, "SyntheticClassificationData", "synth", SYNTH_DOCS, SYNTH_ROWS, **SYNTH_META)
    return root


def items(dataset) -> list[tuple[str, list[str]]]:
    return [(dataset[i]["query"], dataset[i]["passages"]) for i in range(len(dataset))]


def test_their_layout_gives_the_first_positive_and_the_first_negatives_in_order(hub):
    fever = retrieval_dataset(hub / "FEVER", num_negatives=2, sample_negatives=False)
    assert items(fever) == [
        ("Paris is French.", ["Paris is in France.", "Rome is in Italy.", "Oslo is cold."]),
        ("Rome is Italian.", ["Rome is in Italy.", "Oslo is cold.", "Oslo is cold."]),  # cycled
    ]
    whole = retrieval_dataset(hub, num_negatives=1, sample_negatives=False)  # every subset
    assert [q for q, _ in items(whole)] == ["Paris is French.", "Rome is Italian."] + [
        f"text {i}" for i in range(6)
    ]  # subsets in sorted order: FEVER, then SyntheticClassificationData
    assert items(whole)[7] == ("text 5", ["label 5", "label 0"])


def test_their_prepared_json_reads_as_the_hub_layout(hub, tmp_path):
    """data_preparation.py's <subset>.json (rows with corpus_id) over a Merlin corpus folder."""
    prepared = tmp_path / "prepared" / "FEVER"
    corpus = prepared / "corpus"
    parquet(corpus / "train.parquet", [{"id": k, "text": v} for k, v in FEVER_DOCS.items()])
    meta = {"corpus_id": "fever", "class": "TextQADataset", "query_instruction": FEVER_INSTRUCTION}
    (corpus / "merlin_metadata.json").write_text(json.dumps(meta))
    (prepared / "FEVER.json").write_text(json.dumps({"data": FEVER_ROWS, "corpus": {"path": "corpus"}}, indent=2))  # fmt: skip
    options = {"num_negatives": 3, "sample_negatives": False, "instructions": True}
    ours = retrieval_dataset(prepared / "FEVER.json", **options)
    assert items(ours) == items(retrieval_dataset(hub / "FEVER", **options))
    (corpus / "merlin_metadata.json").write_text(json.dumps({**meta, "class": "ColPaliDataset"}))
    with pytest.raises(DataError, match=r"FEVER.json: corpus .* is a 'ColPaliDataset'; only their text"):  # fmt: skip
        retrieval_dataset(prepared / "FEVER.json")


def test_instructions_are_joined_before_queries_and_every_passage(hub):
    data = retrieval_dataset(
        [hub / "FEVER", hub / "SyntheticClassificationData"],
        num_negatives=1,
        sample_negatives=False,
        instructions=True,
    )
    assert items(data)[0] == (
        FEVER_INSTRUCTION + " Paris is French.",  # no passage instruction: passages as they are
        ["Paris is in France.", "Rome is in Italy."],
    )
    assert items(data)[2] == ("Classify the text: text 0", ["Label: label 0", "Label: label 1"])


def test_several_sources_concatenate_sample_and_slice_as_theirs(hub, tmp_path):
    import datasets

    inline = tmp_path / "inline.jsonl"
    inline.write_text("".join(
        json.dumps({"query": f"inline {i}", "pos_doc": f"p{i}", "neg_doc": [f"n{i}"]}) + "\n" for i in range(3)
    ))  # fmt: skip
    sources = [hub / "FEVER", {"path": str(hub / "SyntheticClassificationData"), "num_samples": 4}, inline]  # fmt: skip
    data = retrieval_dataset(sources, num_negatives=1, seed=42)
    drawn = random.Random(42).sample([r["question"] for r in SYNTH_ROWS], 4)  # their draw
    order = ["Paris is French.", "Rome is Italian.", *drawn, "inline 0", "inline 1", "inline 2"]
    assert [q for q, _ in items(data)] == order
    # max_train_samples 3 from offset 2 after do_shuffle: their Dataset.shuffle(seed).select
    picked = datasets.Dataset.from_dict({"q": order}).shuffle(seed=7).select(range(2, 5))["q"]
    window = retrieval_dataset(sources, "train[2:5]", num_negatives=1, seed=42, shuffle_seed=7)
    assert [q for q, _ in items(window)] == picked


def test_hf_uri_reads_the_hub_cache(hub, tmp_path, monkeypatch):
    """hf://<org>/<repo>/<subset> as huggingface_hub downloads it (here from its cache, offline)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub_cache"
    repo = cache / "datasets--acme--embed-data"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(hub, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    data = retrieval_dataset("hf://acme/embed-data/FEVER", num_negatives=2, sample_negatives=False)
    assert items(data) == items(retrieval_dataset(hub / "FEVER", num_negatives=2, sample_negatives=False))  # fmt: skip
    assert len(retrieval_dataset("hf://acme/embed-data", num_negatives=1)) == 8  # every subset
    with pytest.raises(DataError, match=r"hf://acme/other/FEVER: could not download dataset 'acme/other'"):  # fmt: skip
        retrieval_dataset("hf://acme/other/FEVER")


def test_bad_sources_are_named(hub, tmp_path):
    inline = tmp_path / "inline.jsonl"
    inline.write_text(json.dumps({"query": "q", "pos_doc": "p", "neg_doc": ["n"]}) + "\n")
    with pytest.raises(DataError, match=r"inline.jsonl, split=train\): instructions: true reads"):
        retrieval_dataset([hub / "FEVER", inline], instructions=True)
    with pytest.raises(DataError, match=r"dataset file not found: missing.jsonl"):
        retrieval_dataset([hub / "FEVER", "missing.jsonl"])
    with pytest.raises(DataError, match=r"source \{'path': 'a.jsonl', 'num_sample': 3\}: .*unknown: num_sample"):  # fmt: skip
        retrieval_dataset([{"path": "a.jsonl", "num_sample": 3}])
    (hub / "FEVER" / "queries.parquet").unlink()
    with pytest.raises(DataError, match=r"embed-data/FEVER: no queries.parquet"):
        retrieval_dataset(hub)
    meta = json.loads((hub / "FEVER" / "dataset_metadata.json").read_text())
    (hub / "FEVER" / "dataset_metadata.json").write_text(json.dumps({**meta, "ids_only": True}))
    with pytest.raises(DataError, match=r"FEVER: its dataset_metadata.json says ids_only"):
        retrieval_dataset(hub / "FEVER")
    rows = [{**SYNTH_ROWS[0], "neg_doc": [{"id": "nope"}]}]
    parquet(hub / "SyntheticClassificationData" / "queries.parquet", rows)
    with pytest.raises(DataError, match=r"SyntheticClassificationData/queries.parquet\): row 0: 'neg_doc' names the id 'nope'"):  # fmt: skip
        retrieval_dataset(hub / "SyntheticClassificationData")
