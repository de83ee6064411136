"""The retrieval recipes' sections and data: the tokenizer, query-passage training rows, held-out
queries over a corpus, and their loaders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from automodel.core.config import ConfigNode, Section, instantiate
from automodel.core.data import RetrievalDataset, RetrievalEvalSet, TextCollator

from .._builders import build_loader
from .._errors import config_problem
from .._sections import (
    CHECKPOINT_SECTIONS,
    LOADER_SECTIONS,
    MODEL_SECTIONS,
    OPTIMIZER_SECTIONS,
    RUN_SECTIONS,
)


@dataclass(frozen=True)
class Evaluation:
    """`evaluation:` retrieval metrics on the validation set (recall@k for each k, MRR@10,
    nDCG@10), the corpus embedded and searched this many passages at a time."""

    recall_at: tuple[int, ...] = (1, 5, 10)
    corpus_chunk_size: int = 1024


# What the retrieval recipes read: the standard sections (no `moe:`), the data and evaluation;
# each recipe adds its own section (`bi_encoder:`, `cross_encoder:`).
RETRIEVAL_SECTIONS = {
    **RUN_SECTIONS,
    **{name: section for name, section in MODEL_SECTIONS.items() if name != "moe"},
    "tokenizer": Section(needs_target=True),
    "dataset": Section(required=True, needs_target=True),
    "validation_dataset": Section(needs_target=True),
    "evaluation": Section(keys_of=Evaluation),
    **LOADER_SECTIONS,
    **OPTIMIZER_SECTIONS,
    **CHECKPOINT_SECTIONS,
}


class IndexedTexts(Dataset):
    """The held-out queries as (position, text) items, so a rank knows which queries it has."""

    def __init__(self, texts: list[str]):
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[int, str]:
        return index, self.texts[index]


class IndexedCollator:
    """Tokenized texts plus their positions (`index`)."""

    def __init__(self, collate_texts: TextCollator):
        self.collate_texts = collate_texts

    def __call__(self, items: list[tuple[int, Any]]) -> dict[str, torch.Tensor]:
        return {
            "index": torch.tensor([index for index, _ in items]),
            **self.collate_texts([text for _, text in items]),
        }


def build_retrieval_loaders(
    cfg: ConfigNode,
    collate_train: Any,
    collate_queries: Any,
    batch_size: int,
    seed: int,
    dp_rank: int,
    dp_size: int,
) -> tuple[RetrievalDataset, Any, RetrievalEvalSet | None, Any]:
    """(train dataset, its loader, validation set or None, loader over its queries or None):
    each data-parallel rank reads its shard of both. `collate_queries` batches (position, query)
    items of the validation set."""
    shard = {"dp_rank": dp_rank, "dp_size": dp_size, "seed": seed}
    train_set = instantiate(cfg.dataset)
    if not isinstance(train_set, RetrievalDataset):
        message = f"_target_ built a {type(train_set).__name__}; use automodel.core.data.retrieval_dataset"  # fmt: skip
        raise config_problem(cfg, "dataset", message)
    train_loader = build_loader(
        cfg, "dataloader", train_set, batch_size, **shard, collate_fn=collate_train
    )
    if "validation_dataset" not in cfg:
        return train_set, train_loader, None, None
    eval_set = instantiate(cfg.validation_dataset)
    if not isinstance(eval_set, RetrievalEvalSet):
        message = f"_target_ built a {type(eval_set).__name__}; use automodel.core.data.retrieval_eval_set"  # fmt: skip
        raise config_problem(cfg, "validation_dataset", message)
    queries = IndexedTexts(eval_set.queries)
    val_loader = build_loader(
        cfg, "validation_dataloader", queries, batch_size, **shard, validation=True,
        collate_fn=collate_queries,
    )  # fmt: skip
    return train_set, train_loader, eval_set, val_loader
