"""Exact search of a whole corpus, chunk by chunk: what validation and hard-negative mining share.

Memory stays flat in the corpus size: a chunk of passages is embedded, scored against the
queries and folded into each query's running top-k (and, for the validation loss, the running
log-sum-exp of all scores and of the positives' scores); then it is dropped. With several
data-parallel ranks, each embeds its own chunks and every rank scores its queries against the
chunks of all ranks (gathered), so the corpus is embedded once in all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from automodel.core.training import TopK

Encode = Callable[[Sequence[str]], torch.Tensor]  # texts -> [n, dim] embeddings


@dataclass
class CorpusScores:
    """What one pass over the corpus leaves for each query: its top-k, and log-sum-exps of the
    (temperature-scaled) scores over every passage and over its relevant passages."""

    top: TopK
    log_sum_all: torch.Tensor  # [nq]
    log_sum_relevant: torch.Tensor  # [nq]; -inf for a query without a relevant passage
    relevant_pairs: torch.Tensor = field(repr=False)  # [n, 2] (query row, corpus position)

    def add(self, scores: torch.Tensor, first: int, temperature: float) -> None:
        """Fold the scores [nq, chunk] of corpus positions first.. into the running results."""
        self.top.add(scores, first)
        scaled = scores / temperature
        self.log_sum_all = torch.logaddexp(self.log_sum_all, torch.logsumexp(scaled, dim=1))
        rows, cols = self.relevant_pairs[:, 0], self.relevant_pairs[:, 1] - first
        inside = (cols >= 0) & (cols < scores.shape[1])
        if inside.any():
            masked = torch.full_like(scaled, float("-inf"))
            masked[rows[inside], cols[inside]] = scaled[rows[inside], cols[inside]]
            self.log_sum_relevant = torch.logaddexp(
                self.log_sum_relevant, torch.logsumexp(masked, dim=1)
            )


def search_corpus(
    queries: torch.Tensor,
    corpus: Sequence[str],
    encode: Encode,
    *,
    k: int,
    relevant: Sequence[set[int]] | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    group: dist.ProcessGroup | None = None,
) -> CorpusScores:
    """Score `queries` [nq, dim] against every passage of `corpus`, embedded `chunk_size` at a
    time by `encode`; with a `group` of several ranks, every rank passes its own queries and
    the chunks are shared out (each rank must call this with the same corpus and chunk size)."""
    world = dist.get_world_size(group) if group is not None and dist.is_initialized() else 1
    rank = dist.get_rank(group) if world > 1 else 0
    device = queries.device
    pairs = [(row, pos) for row, positives in enumerate(relevant or []) for pos in positives]
    result = CorpusScores(
        top=TopK(queries.shape[0], min(k, len(corpus)), device=device),
        log_sum_all=torch.full((queries.shape[0],), float("-inf"), device=device),
        log_sum_relevant=torch.full((queries.shape[0],), float("-inf"), device=device),
        relevant_pairs=torch.tensor(pairs, dtype=torch.long, device=device).reshape(-1, 2),
    )
    starts = list(range(0, len(corpus), chunk_size))
    for round_start in range(0, len(starts), world):
        mine = round_start + rank
        # A rank without a chunk this round still embeds one (sharded models' forwards are
        # collective) and marks it empty.
        first = starts[mine] if mine < len(starts) else -1
        texts = corpus[max(first, 0) : max(first, 0) + chunk_size]
        embedded = encode(texts)
        if world == 1:
            result.add(queries @ embedded.T.to(queries.dtype), first, temperature)
            continue
        for start, chunk in _gather_chunks(embedded, first, chunk_size, group, world):
            result.add(queries @ chunk.T.to(queries.dtype), start, temperature)
    return result


def _gather_chunks(
    embedded: torch.Tensor, first: int, chunk_size: int, group: dist.ProcessGroup, world: int
) -> list[tuple[int, torch.Tensor]]:
    """Every rank's (first position, embeddings) of this round, empty chunks left out."""
    padded = embedded.new_zeros((chunk_size, embedded.shape[1]))
    padded[: embedded.shape[0]] = embedded
    header = torch.tensor([first, embedded.shape[0]], device=embedded.device)
    chunks = [torch.empty_like(padded) for _ in range(world)]
    headers = [torch.empty_like(header) for _ in range(world)]
    dist.all_gather(chunks, padded, group=group)
    dist.all_gather(headers, header, group=group)
    gathered = []
    for chunk, (start, size) in zip(chunks, (h.tolist() for h in headers), strict=True):
        if start >= 0:
            gathered.append((start, chunk[:size]))
    return gathered
