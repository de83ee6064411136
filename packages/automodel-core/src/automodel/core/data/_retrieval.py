"""Retrieval data: queries with a positive and hard-negative passages, held-out queries over a
corpus, and the collators that tokenize them for bi-encoders and cross-encoders.

A training row names its passages inline or by id in a corpus:

    {"query": "who leads zorvia?", "pos_doc": "kelmar ruste is ...", "neg_doc": ["...", "..."]}
    {"query": "who leads zorvia?", "pos_ids": ["d17"], "neg_ids": ["d3", "d40"]}  # + a corpus

(`question` is read for `query`; `pos_doc`/`neg_doc` may be one text or a list, and with a corpus
they may hold ids, bare or as {"id": ...}.) A corpus is rows of {"id", "text"}. Every id is
checked against the corpus before training starts, and a missing one is named with its row.
NeMo AutoModel's layouts and lists of sources: `_retrieval_sources`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ._errors import DataError
from ._loading import load_rows
from ._retrieval_sources import read_rows
from ._retrieval_tables import NEGATIVE_COLUMNS, load_corpus, query_rows


class RetrievalDataset(Dataset):
    """Items {"query": str, "passages": [positive, negative_1, ..., negative_n]}, n =
    `num_negatives`: a row's negatives are sampled (without replacement while it has enough,
    then cycling), seeded per row so that every epoch and every resume sees the same ones; or,
    with `sample_negatives=False`, its first n in order (mined rows list the hardest first)."""

    def __init__(
        self,
        queries: list[str],
        positives: list[list[str]],
        negatives: list[list[str]],
        num_negatives: int,
        seed: int = 0,
        sample_negatives: bool = True,
    ):
        self.queries, self.positives, self.negatives = queries, positives, negatives
        self.num_negatives, self.seed = num_negatives, seed
        self.sample_negatives = sample_negatives

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        negatives = self.negatives[index]
        count = min(len(negatives), self.num_negatives)
        if self.sample_negatives:
            picked = random.Random(self.seed * 1_000_003 + index).sample(negatives, count)
        else:
            picked = negatives[:count]
        while len(picked) < self.num_negatives:  # fewer than asked: cycle through them again
            picked.append(negatives[len(picked) % len(negatives)])
        return {"query": self.queries[index], "passages": [self.positives[index][0], *picked]}


def retrieval_dataset(
    path: str | Path | list[Any],
    split: str = "train",
    *,
    corpus: str | Path | None = None,
    num_negatives: int = 1,
    seed: int = 0,
    sample_negatives: bool = True,
    name: str | None = None,
    shuffle_seed: int | None = None,
    instructions: bool = False,
) -> RetrievalDataset:
    """Training rows (query, positive, hard negatives) from JSON(L), parquet, any `datasets`
    source or NeMo AutoModel's layouts, or a list of them read in order (`{path, corpus,
    num_samples}` entries draw `num_samples` rows with `seed`); passages inline or as ids of
    `corpus`; `num_negatives` per query, sampled from the row's with `seed`, or its first ones
    when `sample_negatives` is False; `instructions`: their metadata's query and passage
    instructions joined before each text with a space."""
    if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 0:
        raise DataError(f"num_negatives must be an integer >= 0, got {num_negatives!r}")
    rows = read_rows(path, split, corpus=corpus, name=name, shuffle_seed=shuffle_seed, seed=seed)
    if num_negatives and rows and all(row.negative[0] is None for row in rows):
        raise DataError(
            f"{rows[0].source}: num_negatives is {num_negatives} but the rows have no 'neg_doc' "
            "or 'neg_ids' column; set num_negatives: 0 (in-batch negatives only) or mine hard "
            "negatives first (automodel mine hard_negatives)"
        )
    queries, positives, negatives = [], [], []
    for row in rows:
        source, index, (pos_column, positive), (neg_column, negative) = row.source, row.index, row.positive, row.negative  # fmt: skip
        texts, where = (row.corpus.texts, row.corpus.where) if row.corpus else (None, None)
        pos = _passages(positive, texts, index, pos_column, source, where)
        if not pos:
            raise DataError(f"{source}: row {index}: {pos_column!r} has no positive passage")
        neg = _passages(negative, texts, index, neg_column, source, where)
        if num_negatives and not neg:
            raise DataError(
                f"{source}: row {index} has no negatives but num_negatives is {num_negatives}; "
                "set num_negatives: 0 (in-batch negatives only) or mine hard negatives first "
                "(automodel mine hard_negatives)"
            )
        query = row.query
        if instructions:
            if row.corpus is None or row.corpus.instructions is None:
                raise DataError(
                    f"{source}: instructions: true reads each source's query_instruction and "
                    "passage_instruction from NeMo AutoModel's metadata (dataset_metadata.json, "
                    "merlin_metadata.json), and this source has none; put its instructions "
                    "into its texts, or set instructions: false"
                )
            query_instruction, passage_instruction = row.corpus.instructions
            query = _joined(query_instruction, query)
            pos = [_joined(passage_instruction, p) for p in pos]
            neg = [_joined(passage_instruction, p) for p in neg]
        queries.append(query)
        positives.append(pos)
        negatives.append(neg)
    return RetrievalDataset(queries, positives, negatives, num_negatives, seed, sample_negatives)


def _joined(instruction: str, text: str) -> str:
    """`text` after `instruction` and a space, as their collator joins them (none: `text`)."""
    return f"{instruction} {text}" if instruction else text


@dataclass
class RetrievalEvalSet:
    """Held-out queries over their own corpus: `relevant[i]` holds the corpus positions of query
    i's positives; `candidates[i]` (reranking) the positions it is scored against, if given."""

    queries: list[str]
    relevant: list[set[int]]
    corpus_ids: list[str]
    corpus: list[str]
    candidates: list[list[int]] | None = None


def retrieval_eval_set(
    path: str | Path, corpus: str | Path, split: str = "train", *, name: str | None = None
) -> RetrievalEvalSet:
    """Queries with their positive ids (`pos_ids`) over `corpus`; with `neg_ids` too, each query's
    candidates for reranking are its positives and those negatives."""
    source = f"retrieval_eval_set({path}, split={split})"
    rows = load_rows(path, split, name=name)
    texts = load_corpus(corpus)
    ids = list(texts)
    position = {doc_id: i for i, doc_id in enumerate(ids)}
    queries, relevant, candidates = [], [], []
    for index, query, (pos_column, positive), (neg_column, negative) in query_rows(rows, source):
        pos = [position[i] for i in _ids(positive, position, index, pos_column, source, corpus)]
        if not pos:
            raise DataError(f"{source}: row {index}: {pos_column!r} names no document")
        neg = [position[i] for i in _ids(negative, position, index, neg_column, source, corpus)]
        queries.append(query)
        relevant.append(set(pos))
        candidates.append(list(dict.fromkeys([*pos, *neg])))
    reranking = any(c in rows.column_names for c in NEGATIVE_COLUMNS)
    return RetrievalEvalSet(
        queries, relevant, ids, list(texts.values()), candidates if reranking else None
    )


class TextCollator:
    """Tokenize a batch of texts (`prefix` before each) into `input_ids` and `attention_mask`
    (and whatever else the tokenizer returns), padded to the longest, cut at `max_length`."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 512,
        prefix: str = "",
        pad_to_multiple_of: int | None = None,
    ):
        self.tokenizer, self.max_length, self.prefix = tokenizer, max_length, prefix
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        texts = [self.prefix + text for text in texts]
        return _tokenize(self.tokenizer, self.max_length, self.pad_to_multiple_of, texts)


class BiEncoderCollator:
    """Batch retrieval items for a bi-encoder: the queries under `query_*` keys and every item's
    passages (positive first, then its negatives) under `passage_*` keys."""

    def __init__(
        self,
        tokenizer: Any,
        query_max_length: int = 64,
        passage_max_length: int = 256,
        query_prefix: str = "",
        passage_prefix: str = "",
        pad_to_multiple_of: int | None = None,
    ):
        self.queries = TextCollator(tokenizer, query_max_length, query_prefix, pad_to_multiple_of)
        self.passages = TextCollator(
            tokenizer, passage_max_length, passage_prefix, pad_to_multiple_of
        )

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        queries = self.queries([item["query"] for item in items])
        passages = self.passages([p for item in items for p in item["passages"]])
        return {
            **{f"query_{key}": value for key, value in queries.items()},
            **{f"passage_{key}": value for key, value in passages.items()},
        }


class CrossEncoderCollator:
    """Batch retrieval items for a cross-encoder: one (query, passage) pair per passage, the
    query first, each item's group in order (positive first), cut at `max_length`."""

    def __init__(
        self, tokenizer: Any, max_length: int = 512, pad_to_multiple_of: int | None = None
    ):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        queries = [item["query"] for item in items for _ in item["passages"]]
        passages = [p for item in items for p in item["passages"]]
        return self.pairs(queries, passages)

    def pairs(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenized (query, passage) pairs, as a reranker scores them."""
        pairs = (list(queries), list(passages))
        return _tokenize(self.tokenizer, self.max_length, self.pad_to_multiple_of, *pairs)


def _tokenize(
    tokenizer: Any, max_length: int, pad_to_multiple_of: int | None, *texts: list[str]
) -> dict[str, torch.Tensor]:
    """Texts (or text pairs) as padded tensors, cut at `max_length`, as sentence-transformers
    tokenizes them."""
    encoded = tokenizer(
        *texts,
        padding=True,
        truncation=True,
        max_length=max_length,
        pad_to_multiple_of=pad_to_multiple_of,
        return_tensors="pt",
    )
    return dict(encoded)


def split_towers(batch: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """The query and passage halves of a `BiEncoderCollator` batch, under their model keys."""
    query = {k[len("query_") :]: v for k, v in batch.items() if k.startswith("query_")}
    passage = {k[len("passage_") :]: v for k, v in batch.items() if k.startswith("passage_")}
    return query, passage


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _passages(
    value: Any,
    texts: dict[str, str] | None,
    index: int,
    column: str | None,
    source: str,
    corpus: Any,
) -> list[str]:
    """A row's passages as text: inline texts, or ids looked up in the corpus."""
    if texts is None:
        if column is not None and column.endswith("_ids"):
            raise DataError(
                f"{source}: row {index}: {column!r} holds document ids but no corpus is given; "
                "add `corpus: <file with id and text columns>`"
            )
        passages = _as_list(value)
        for passage in passages:
            if not isinstance(passage, str):
                raise DataError(
                    f"{source}: row {index}: {column!r} must hold text, got "
                    f"{type(passage).__name__} (ids need a `corpus:`)"
                )
        return passages
    return [texts[i] for i in _ids(value, texts, index, column, source, corpus)]


def _ids(
    value: Any, known: dict[str, Any], index: int, column: str | None, source: str, corpus: Any
) -> list[str]:
    """A row's document ids (bare or {"id": ...}), each checked to be in the corpus."""
    ids = []
    for entry in _as_list(value):
        doc_id = str(entry["id"]) if isinstance(entry, dict) and "id" in entry else str(entry)
        if doc_id not in known:
            raise DataError(
                f"{source}: row {index}: {column!r} names the id {doc_id!r}, which is not in "
                f"the corpus {corpus}"
            )
        ids.append(doc_id)
    return ids
