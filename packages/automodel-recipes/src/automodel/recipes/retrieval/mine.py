"""Mine hard negatives: the passages an embedding model ranks high for a query that are not its
positives, written as training rows for the next run.

automodel mine hard_negatives -c examples/retrieval/mine_hard_negatives.yaml

The corpus is embedded `batch_size` passages at a time straight into a cache file beside the
output (memory-mapped, so a corpus larger than memory is fine, and a rerun with the same model and
corpus reuses it); then each query's top `top_k` passages are found by exact search (or faiss,
with the `faiss` extra) over `chunk_size` cached passages at a time. Positives are dropped, and so is every candidate scoring too close to
the query's positives (a likely unlabelled positive): above `margin` x the lowest positive score
(`margin_type: relative`, for cosine scores) or above it minus `margin` (`absolute`); with
`margin: null` no candidate is (for a corpus whose relevant passages are all labelled). The
`num_negatives` best that remain are written (queries left with fewer than `min_negatives` are
not) as `{"query", "pos_ids", "neg_ids", "neg_scores"}` rows, in the corpus-id
form that `retrieval_dataset(..., corpus=...)` reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automodel.checkpoint import atomic_write_text
from automodel.core.config import ConfigNode, Section, UserError, recipe_main
from automodel.core.data import TextCollator, retrieval_eval_set
from automodel.core.logging import ProgressBar, setup_logging
from automodel.core.training import TopK

from .._errors import config_problem
from .._sections import read_section
from ._embedding_model import EmbeddingModel, load_embedding_model

log = logging.getLogger("automodel.recipes.retrieval")
FAISS_INSTALL = "pip install 'automodel-recipes[faiss]'"


@dataclass(frozen=True)
class Mining:
    """`mining:` which model embeds what, how many candidates are searched and how many kept."""

    model: str  # an embedding model folder (ours or sentence-transformers), or a checkpoint dir
    queries: str  # rows with `query` (or `question`) and `pos_ids`
    corpus: str  # rows with `id` and `text`
    output: str  # the training JSONL to write
    top_k: int = 50  # candidates searched per query
    num_negatives: int = 5  # negatives kept per query
    min_negatives: int = 1  # a query left with fewer is not written (0: write every query)
    margin: float | None = 0.95  # null: keep candidates however close to the positives
    margin_type: str = "relative"  # relative | absolute
    search: str = "exact"  # exact | faiss
    batch_size: int = 64  # texts embedded at once
    chunk_size: int = 4096  # cached passages searched at a time
    cache_dir: str | None = None  # default: <output>.cache/
    overwrite: bool = False  # replace an existing output file
    device: str = "auto"  # auto (cuda if present) | cpu | cuda


SECTIONS = {"mining": Section(required=True, keys_of=Mining)}


def run(cfg: ConfigNode) -> Path:
    """Embed, search, filter and write; returns the output path."""
    setup_logging("INFO")
    options = check(cfg)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if options.device == "auto" else options.device
    )  # fmt: skip
    model = load_embedding_model(options.model)
    model.encoder.to(device).eval()
    # Queries with their positives' corpus positions; an unknown id is named with its row.
    wanted = retrieval_eval_set(options.queries, options.corpus)
    queries, positives, ids = wanted.queries, wanted.relevant, wanted.corpus_ids
    cache = _corpus_embeddings(model, wanted.corpus, options, device)
    query_vectors = _embed(model, queries, model.query_prefix, options, device, "queries")
    positive_scores = _positive_scores(query_vectors, cache, positives)
    top = _search(query_vectors, cache, min(options.top_k, len(ids)), options)
    rows, short, dropped = [], 0, 0
    for row, (candidates, scores) in enumerate(zip(top[0].tolist(), top[1].tolist(), strict=True)):
        limit = _threshold(positive_scores[row], options)
        kept = [
            (c, s) for c, s in zip(candidates, scores, strict=True)
            if c not in positives[row] and s < limit
        ][: options.num_negatives]  # fmt: skip
        short += len(kept) < options.num_negatives
        if len(kept) < options.min_negatives:
            dropped += 1
            continue
        rows.append({
            "query": queries[row],
            "pos_ids": [ids[p] for p in sorted(positives[row])],
            "neg_ids": [ids[c] for c, _ in kept],
            "neg_scores": [round(s, 6) for _, s in kept],
        })  # fmt: skip
    if not rows:
        raise UserError(
            f"no query kept {options.min_negatives} hard negative(s): every candidate in each "
            f"query's top {options.top_k} is a positive or within the margin of one; raise "
            "mining.top_k, loosen mining.margin, or lower mining.min_negatives"
        )
    output = Path(options.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    log.info(
        "wrote %d rows with up to %d hard negatives each to %s; %d queries had fewer, %d of them "
        "fewer than min_negatives (%d) and were left out: raise top_k or loosen the margin for "
        "more", len(rows), options.num_negatives, output, short, dropped, options.min_negatives,
    )  # fmt: skip
    return output


@torch.no_grad()
def _embed(
    model: EmbeddingModel,
    texts: list[str],
    prefix: str,
    options: Mining,
    device: torch.device,
    what: str,
    out: np.ndarray | None = None,
) -> torch.Tensor | None:
    """Embeddings of `texts` (into `out`, row by row, when given), `batch_size` at a time."""
    collate = TextCollator(model.tokenizer, model.max_length, prefix)
    parts = []
    with ProgressBar(total=len(texts), desc=f"embedding {what}") as bar:
        for start in range(0, len(texts), options.batch_size):
            batch = collate(texts[start : start + options.batch_size])
            vectors = model.encoder(query={k: v.to(device) for k, v in batch.items()})[0]
            if out is not None:
                out[start : start + len(vectors)] = vectors.float().cpu().numpy()
            else:
                parts.append(vectors.float().cpu())
            bar.update(len(vectors))
    return None if out is not None else torch.cat(parts)


def _corpus_embeddings(
    model: EmbeddingModel, passages: list[str], options: Mining, device: torch.device
) -> np.ndarray:
    """The corpus embeddings, memory-mapped from the cache (written first if not there yet)."""
    cache_dir = Path(options.cache_dir or f"{options.output}.cache")
    key = _cache_key(model, options)
    path = cache_dir / f"corpus-{key}.npy"
    if path.exists():
        log.info("corpus embeddings from the cache %s", path)
        return np.load(path, mmap_mode="r")
    cache_dir.mkdir(parents=True, exist_ok=True)
    dim = model.encoder.query_model.config.hidden_size
    staging = path.with_name(f".staging-{path.name}")
    array = np.lib.format.open_memmap(
        staging, mode="w+", dtype=np.float32, shape=(len(passages), dim)
    )
    _embed(model, passages, model.passage_prefix, options, device, "corpus", out=array)
    array.flush()
    del array
    os.replace(staging, path)  # complete files only: a killed run leaves a staging file
    return np.load(path, mmap_mode="r")


def _cache_key(model: EmbeddingModel, options: Mining) -> str:
    """Changes with the model's weights, the corpus file and how passages are embedded."""
    parts = [str(model.folder.resolve()), model.passage_prefix, str(model.max_length)]
    for path in [*sorted(model.folder.glob("*.safetensors")), Path(options.corpus)]:
        stat = path.stat()
        parts.append(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _positive_scores(
    queries: torch.Tensor, corpus: np.ndarray, positives: list[set[int]]
) -> list[float]:
    """Each query's lowest score over its positives."""
    return [
        float((torch.from_numpy(np.array(corpus[sorted(p)])) @ q).min())
        for q, p in zip(queries, positives, strict=True)
    ]


def _search(
    queries: torch.Tensor, corpus: np.ndarray, k: int, options: Mining
) -> tuple[torch.Tensor, torch.Tensor]:
    """(corpus positions, scores) of each query's top k, best first."""
    if options.search == "faiss":
        faiss = _faiss()
        index = faiss.IndexFlatIP(corpus.shape[1])
        for start in range(0, corpus.shape[0], options.chunk_size):
            index.add(np.ascontiguousarray(corpus[start : start + options.chunk_size]))
        scores, positions = index.search(queries.numpy(), k)
        return torch.from_numpy(positions), torch.from_numpy(scores)
    top = TopK(queries.shape[0], k)
    with ProgressBar(total=corpus.shape[0], desc="searching") as bar:
        for start in range(0, corpus.shape[0], options.chunk_size):
            chunk = torch.from_numpy(np.array(corpus[start : start + options.chunk_size]))
            top.add(queries @ chunk.T, start)
            bar.update(len(chunk))
    return top.indices, top.scores


def _threshold(positive: float, options: Mining) -> float:
    """Candidates scoring at or above this are too close to the positives to be negatives."""
    if options.margin is None:
        return float("inf")
    if options.margin_type == "relative":
        return positive * options.margin
    return positive - options.margin


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise UserError(f"mining.search: faiss needs the faiss extra: {FAISS_INSTALL}") from e
    return faiss


def check(cfg: ConfigNode) -> Mining:
    """The `mining:` options, checked before any model is loaded."""
    options = read_section(cfg, "mining", Mining)
    if options.margin_type not in ("relative", "absolute"):
        raise config_problem(cfg, "mining.margin_type", f"expected relative or absolute, got {options.margin_type!r}")  # fmt: skip
    if options.search not in ("exact", "faiss"):
        raise config_problem(cfg, "mining.search", f"expected exact or faiss, got {options.search!r}")  # fmt: skip
    if options.search == "faiss":
        _faiss()
    for key in ("top_k", "num_negatives", "batch_size", "chunk_size"):
        if getattr(options, key) < 1:
            raise config_problem(cfg, f"mining.{key}", "must be >= 1")
    if not 0 <= options.min_negatives <= options.num_negatives:
        raise config_problem(cfg, "mining.min_negatives", "must be between 0 and num_negatives")
    if Path(options.output).exists() and not options.overwrite:
        message = f"{options.output} exists; set mining.overwrite: true to replace it, or choose another output"  # fmt: skip
        raise config_problem(cfg, "mining.output", message)
    return options


def main(argv: list[str] | None = None) -> int:
    """Mine hard negatives for retrieval training with an embedding model."""
    return recipe_main(argv, sections=SECTIONS, run=run, check=check)
