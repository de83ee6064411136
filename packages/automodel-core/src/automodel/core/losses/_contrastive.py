"""Retrieval losses: InfoNCE for bi-encoders (across ranks too), listwise CE for rerankers.

Both sum the float32 per-query cross-entropies and divide by `num_queries` (the queries of the
whole optimizer step: every micro-batch and every data-parallel rank) or, when it is None, by
the queries in this batch, so that accumulated micro-batches give the gradient of the whole step.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather


def contrastive_loss(
    queries: torch.Tensor,
    passages: torch.Tensor,
    *,
    temperature: float = 0.05,
    in_batch_negatives: bool = True,
    group: dist.ProcessGroup | None = None,
    num_queries: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of queries [nq, d] against passages [nq * g, d]: each query's positive vs negatives.

    Passages are laid out per query as `[positive, hard negative 1, ..., hard negative g-1]`.
    Scores are `queries @ passages.T / temperature` in float32. With `in_batch_negatives` every
    query is scored against every passage of the batch (the other queries' positives and hard
    negatives are its extra negatives); without, only against its own g passages.

    With a `group` of world size > 1 (and `in_batch_negatives`), the passages of every rank of the
    group are gathered with their gradients (`torch.distributed.nn.functional.all_gather`, whose
    backward sums each rank's passage gradients over the ranks) and each rank's queries are
    scored against all of them. Every rank must then pass the same shapes (a `drop_last` loader
    guarantees it; checking would cost a collective per call, and a mismatch aborts or hangs in
    the gather) and run backward on its loss, since the gather's backward is a collective too.
    Each rank's loss is the sum of its own queries' cross-entropies over `num_queries`, so the
    sum of the ranks' losses is the global loss: multiply each by the world size when the
    gradients are averaged over ranks (DDP, FSDP).
    """
    if queries.dim() != 2 or passages.dim() != 2 or queries.shape[1] != passages.shape[1]:
        raise ValueError(
            f"queries {tuple(queries.shape)} and passages {tuple(passages.shape)} must be "
            "[nq, d] and [nq * g, d] embeddings of the same size d"
        )
    nq, num_passages = queries.shape[0], passages.shape[0]
    if nq == 0 or num_passages == 0 or num_passages % nq:
        raise ValueError(
            f"passages ({num_passages}) must be a positive multiple of queries ({nq}): "
            "g passages per query, [positive, hard negatives...]"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    g = num_passages // nq
    q = queries.float()
    if not in_batch_negatives:
        scores = torch.einsum("qd,qgd->qg", q, passages.float().view(nq, g, -1)) / temperature
        return listwise_cross_entropy(scores, num_queries)
    offset = 0
    if group is not None and dist.get_world_size(group) > 1:
        offset = dist.get_rank(group) * num_passages
        passages = _gather(passages, group)
    scores = (q @ passages.float().T) / temperature
    targets = offset + torch.arange(nq, device=scores.device) * g
    return F.cross_entropy(scores, targets, reduction="sum") / _divisor(scores, num_queries)


def listwise_cross_entropy(
    scores: torch.Tensor, num_queries: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-encoder group loss: scores [nq, g] with each query's positive in column 0."""
    if scores.dim() != 2 or scores.shape[1] == 0:
        raise ValueError(
            f"scores {tuple(scores.shape)} must be [nq, g]: one row per query, positive first"
        )
    targets = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    loss_sum = F.cross_entropy(scores.float(), targets, reduction="sum")
    return loss_sum / _divisor(scores, num_queries)


def _gather(passages: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Every rank's passages in rank order, differentiable: backward sums the ranks' gradients."""
    with warnings.catch_warnings():
        # Deprecated in recent torch for the private `_functional_collectives` gathers, whose
        # names change between versions; this public one works from our torch floor up, on gloo.
        warnings.filterwarnings("ignore", ".*nn.functional.all_gather", FutureWarning)
        return torch.cat(all_gather(passages, group=group))


def _divisor(scores: torch.Tensor, num_queries: int | torch.Tensor | None) -> torch.Tensor:
    """Float32 divisor of the summed loss; at least 1, so a step without queries gives 0."""
    num = scores.shape[0] if num_queries is None else num_queries
    return torch.as_tensor(num, device=scores.device).to(torch.float32).clamp_min(1.0)
