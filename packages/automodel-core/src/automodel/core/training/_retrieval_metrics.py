"""Retrieval evaluation: a running top-k over corpus chunks, and recall / MRR / nDCG from it.

The metrics come as (sum over queries, number of queries) so that a distributed evaluation sums
both over ranks before dividing; queries without relevant documents are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import torch

CUTOFF = 10  # rank cut-off of mrr@10 and ndcg@10


class TopK:
    """Top-k corpus indices and scores of each query, kept while the corpus is scored by chunks.

    Memory stays flat in corpus size: each `add` keeps only the best k of the running top-k and
    the chunk. Equal scores rank the lower corpus index first, whatever the chunk order. Before
    k documents have been added, `indices` and `scores` hold all of them (k is clamped to the
    corpus seen so far, so a corpus smaller than k ranks every document). The running top-k
    lives on `device`, or on the chunks' device when it is None.
    """

    def __init__(self, num_queries: int, k: int, device: torch.device | str | None = None):
        if k < 1 or num_queries < 0:
            raise ValueError(f"TopK needs k >= 1 and num_queries >= 0, got {k=}, {num_queries=}")
        self.num_queries, self.k = num_queries, k
        self._device = None if device is None else torch.device(device)  # None: the chunks'
        self._scores = torch.empty(num_queries, 0, device=self._device)
        self._indices = torch.empty(num_queries, 0, dtype=torch.long, device=self._device)

    @property
    def scores(self) -> torch.Tensor:
        """[nq, min(k, documents added)] scores, descending: float32 (float64 if given)."""
        return self._scores

    @property
    def indices(self) -> torch.Tensor:
        """[nq, min(k, documents added)] corpus indices, best first."""
        return self._indices

    def add(self, scores: torch.Tensor, first_index: int) -> None:
        """Merge scores [nq, chunk] of corpus documents first_index .. first_index + chunk - 1."""
        if scores.dim() != 2 or scores.shape[0] != self.num_queries:
            raise ValueError(
                f"scores {tuple(scores.shape)} must be [num_queries={self.num_queries}, chunk]"
            )
        if first_index < 0:
            raise ValueError(f"first_index must be >= 0, got {first_index}")
        device = scores.device if self._device is None else self._device
        values, positions = _chunk_top(scores, min(self.k, scores.shape[1]))
        dtype = torch.promote_types(values.dtype, self._scores.dtype)  # bf16 ranks in float32
        vals = torch.cat([self._scores.to(device, dtype), values.to(device, dtype)], dim=1)
        idx = torch.cat([self._indices.to(device), positions.to(device) + first_index], dim=1)
        # Lexicographic (score descending, index ascending): the candidates put in index order,
        # then stably sorted by score.
        by_index = idx.argsort(dim=1, stable=True)
        vals, idx = vals.gather(1, by_index), idx.gather(1, by_index)
        best = vals.argsort(dim=1, descending=True, stable=True)[:, : self.k]
        self._scores, self._indices = vals.gather(1, best), idx.gather(1, best)


def _chunk_top(scores: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best `width` (scores, positions) of each row; of equal scores at the cut, the first ones.

    `topk` alone is fast but picks arbitrarily among scores equal to its last value.
    """
    values, positions = scores.topk(width, dim=1)
    if width == 0:
        return values, positions
    cut = values[:, -1:]
    above = (values > cut).sum(dim=1, keepdim=True)  # every score above the cut is in the top
    tied = scores == cut
    # One host sync per chunk: the fix-up runs only when the cut leaves out an equal score.
    if not bool((tied.sum(dim=1, keepdim=True) > width - above).any()):
        return values, positions
    columns = torch.arange(scores.shape[1], device=scores.device)
    tied_positions = torch.where(tied, columns, scores.shape[1])
    lowest_tied = tied_positions.topk(width, dim=1, largest=False).values  # ascending
    slots = torch.arange(width, device=scores.device)
    from_tied = lowest_tied.gather(1, (slots - above).clamp_min(0))
    return values, torch.where(slots >= above, from_tied, positions)


def retrieval_metric_sums(
    ranked: torch.Tensor | Sequence[Sequence[int]],
    relevant: Sequence[Collection[int]],
    recall_at: Sequence[int] = (1, 5, 10),
) -> dict[str, tuple[float, int]]:
    """(sum over queries, queries counted) of `recall@k` for each k, `mrr@10` and `ndcg@10`.

    `ranked` [nq, >= 10] holds each query's distinct corpus indices best first (`TopK.indices`),
    `relevant` each query's relevant corpus indices (binary relevance). Recall divides the hits
    by all the query's relevant documents; nDCG's ideal ranking has min(|relevant|, 10) hits.
    Queries without relevant documents are skipped. Sum both parts over ranks, then divide.
    """
    rows = ranked.tolist() if isinstance(ranked, torch.Tensor) else ranked  # one host sync
    if len(rows) != len(relevant):
        raise ValueError(f"ranked has {len(rows)} queries but relevant has {len(relevant)}")
    if any(not isinstance(k, int) or k < 1 for k in recall_at):
        raise ValueError(f"recall_at must hold positive ints, got {recall_at!r}")
    names = [f"recall@{k}" for k in recall_at] + [f"mrr@{CUTOFF}", f"ndcg@{CUTOFF}"]
    sums = dict.fromkeys(names, 0.0)
    counted = 0
    for row, rel in zip(rows, relevant, strict=True):
        rel = set(rel)
        if not rel:
            continue
        counted += 1
        hits = [doc in rel for doc in row]
        for k in recall_at:
            sums[f"recall@{k}"] += sum(hits[:k]) / len(rel)
        top = hits[:CUTOFF]
        sums[f"mrr@{CUTOFF}"] += 1.0 / (top.index(True) + 1) if True in top else 0.0
        dcg = sum(_discount(i) for i, hit in enumerate(top) if hit)
        ideal = sum(_discount(i) for i in range(min(len(rel), CUTOFF)))
        sums[f"ndcg@{CUTOFF}"] += dcg / ideal
    return {name: (sums[name], counted) for name in names}


def retrieval_metrics(
    ranked: torch.Tensor | Sequence[Sequence[int]],
    relevant: Sequence[Collection[int]],
    recall_at: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Means of `retrieval_metric_sums` over the counted queries (NaN when none has relevants)."""
    sums = retrieval_metric_sums(ranked, relevant, recall_at)
    return {name: total / n if n else math.nan for name, (total, n) in sums.items()}


def _discount(rank0: int) -> float:
    """DCG weight of the 0-based rank `rank0`."""
    return 1.0 / math.log2(rank0 + 2)
