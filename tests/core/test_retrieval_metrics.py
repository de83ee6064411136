"""Tests of the retrieval evaluation: TopK over chunks equals one topk of the whole score matrix,
and recall / MRR@10 / nDCG@10 equal trec_eval's (the pytrec_eval library) on random rankings."""

from __future__ import annotations

import math

import pytest
import pytrec_eval
import torch

from automodel.core.training import TopK, retrieval_metric_sums, retrieval_metrics

NQ, CORPUS = 7, 53


def run_chunks(scores: torch.Tensor, k: int, sizes: list[int], reverse: bool = False) -> TopK:
    """A TopK fed `scores` [nq, corpus] in chunks of `sizes` (last to first if `reverse`)."""
    assert sum(sizes) == scores.shape[1]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    chunks = list(zip(starts, sizes, strict=True))
    top = TopK(len(scores), k)
    for start, size in reversed(chunks) if reverse else chunks:
        top.add(scores[:, start : start + size], first_index=start)
    return top


def tie_broken_reference(scores: torch.Tensor, k: int) -> list[list[int]]:
    """Each row's k best columns: higher score first, then the lower column."""
    return [sorted(range(len(row)), key=lambda j: (-row[j], j))[:k] for row in scores.tolist()]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("sizes", [[3, 17, 8, 25], [CORPUS], [1] * CORPUS])
def test_topk_over_chunks_equals_topk_of_the_whole_matrix(sizes: list[int], reverse: bool):
    scores = torch.randn(NQ, CORPUS, generator=torch.Generator().manual_seed(len(sizes)))
    top = run_chunks(scores, k=10, sizes=sizes, reverse=reverse)
    expected = scores.topk(10, dim=1)
    assert torch.equal(top.indices, expected.indices)
    assert torch.equal(top.scores, expected.values)


def test_k_above_the_corpus_ranks_every_document():
    scores = torch.randn(NQ, CORPUS, generator=torch.Generator().manual_seed(1))
    top = TopK(NQ, k=100)
    assert top.indices.shape == (NQ, 0)  # nothing added yet
    top.add(scores[:, :20], first_index=0)
    assert top.indices.shape == (NQ, 20)  # clamped to the documents seen so far
    top.add(scores[:, 20:], first_index=20)
    assert torch.equal(top.indices, scores.argsort(dim=1, descending=True))
    assert top.scores.shape == (NQ, CORPUS)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("sizes", [[3, 17, 8, 25], [CORPUS], [10, 43]])
def test_equal_scores_rank_the_lower_corpus_index_first(sizes: list[int], reverse: bool):
    # Three score levels over 53 documents: ties everywhere, the cut inside a tie.
    scores = torch.randint(0, 3, (NQ, CORPUS), generator=torch.Generator().manual_seed(2)).float()
    top = run_chunks(scores, k=10, sizes=sizes, reverse=reverse)
    assert top.indices.tolist() == tie_broken_reference(scores, 10)


def test_bf16_chunks_keep_float32_scores_on_the_given_device():
    scores = torch.randn(NQ, CORPUS, generator=torch.Generator().manual_seed(3))
    top = TopK(NQ, k=5, device="cpu")
    top.add(scores.bfloat16(), first_index=0)
    assert top.scores.dtype == torch.float32 and top.scores.device.type == "cpu"
    assert top.indices.tolist() == tie_broken_reference(scores.bfloat16().float(), 5)


def test_topk_errors():
    with pytest.raises(ValueError, match="k >= 1"):
        TopK(NQ, k=0)
    top = TopK(NQ, k=3)
    with pytest.raises(ValueError, match=r"scores \(6, 4\) must be \[num_queries=7, chunk\]"):
        top.add(torch.randn(6, 4), first_index=0)
    with pytest.raises(ValueError, match="first_index must be >= 0"):
        top.add(torch.randn(NQ, 4), first_index=-1)


def test_hand_worked_example():
    ranked = torch.tensor(
        [
            [3, 1, 4, 0, 2],  # relevant {1, 2}: hits at ranks 2 and 5
            [0, 1, 2, 3, 4],  # relevant {0}: hit at rank 1
            [0, 1, 2, 3, 4],  # no relevant documents: not counted
            [0, 1, 2, 3, 4],  # relevant {7}: never retrieved
        ]
    )
    relevant = [{1, 2}, {0}, set(), {7}]
    # Query 1: recall@1 0, recall@5 2/2 = 1, MRR 1/2,
    #   nDCG = (1/log2(3) + 1/log2(6)) / (1 + 1/log2(3)) = 1.0177826 / 1.6309298 = 0.6240505.
    # Query 2: every metric 1. Query 4: every metric 0. Three queries counted.
    ndcg_1 = (1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3))
    assert ndcg_1 == pytest.approx(0.6240505)
    sums = retrieval_metric_sums(ranked, relevant)
    assert sums == {
        "recall@1": (1.0, 3),
        "recall@5": (2.0, 3),
        "recall@10": (2.0, 3),
        "mrr@10": (1.5, 3),
        "ndcg@10": (pytest.approx(ndcg_1 + 1.0), 3),
    }
    means = retrieval_metrics(ranked.tolist(), relevant, recall_at=(1, 5))
    assert means == pytest.approx(
        {"recall@1": 1 / 3, "recall@5": 2 / 3, "mrr@10": 0.5, "ndcg@10": 0.5413502}
    )


def test_ndcg_ideal_ranking_has_at_most_ten_hits():
    # 12 relevant documents, the top 10 all relevant: a perfect nDCG@10, recall@10 10/12.
    metrics = retrieval_metrics([list(range(12))], [set(range(12))])
    assert metrics["ndcg@10"] == pytest.approx(1.0)
    assert metrics["recall@10"] == pytest.approx(10 / 12)
    # An MRR@10 hit must be within the top 10.
    assert retrieval_metrics([list(range(12))], [{10}])["mrr@10"] == 0.0


def test_no_counted_query_gives_nan_means():
    assert retrieval_metric_sums([[0, 1]], [set()])["mrr@10"] == (0.0, 0)
    assert math.isnan(retrieval_metrics([[0, 1]], [set()])["ndcg@10"])


def test_metric_errors():
    with pytest.raises(ValueError, match="ranked has 2 queries but relevant has 1"):
        retrieval_metric_sums([[0], [1]], [{0}])
    with pytest.raises(ValueError, match="recall_at must hold positive ints"):
        retrieval_metric_sums([[0]], [{0}], recall_at=(0,))


def test_metrics_match_trec_eval_on_random_rankings():
    """Random continuous scores (no ties) over 200 documents, 1-4 relevant per query."""
    gen = torch.Generator().manual_seed(0)
    nq, corpus = 40, 200
    scores = torch.rand(nq, corpus, generator=gen, dtype=torch.float64)
    relevant = [
        set(torch.randperm(corpus, generator=gen)[: int(n)].tolist())
        for n in torch.randint(1, 5, (nq,), generator=gen)
    ]
    # Make hits frequent: raise a random relevant document into the top scores of most queries.
    for q, rel in enumerate(relevant):
        if q % 4:
            scores[q, min(rel)] += 0.9 + 0.1 * q / nq
    top = run_chunks(scores, k=10, sizes=[64, 64, 64, 8])
    assert torch.equal(top.indices, scores.topk(10, dim=1).indices)  # float64 kept
    mine = retrieval_metric_sums(top.indices, relevant)

    qrels = {str(q): {str(d): 1 for d in rel} for q, rel in enumerate(relevant)}
    full_run = {
        str(q): {str(d): float(s) for d, s in enumerate(row)} for q, row in enumerate(scores)
    }
    top10_run = {
        str(q): {str(d): float(s) for d, s in enumerate(row) if d in set(t)}
        for q, (row, t) in enumerate(zip(scores, top.indices.tolist(), strict=True))
    }
    full = pytrec_eval.RelevanceEvaluator(qrels, {"recall.1,5,10", "ndcg_cut.10"}).evaluate(
        full_run
    )
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10_run)

    per_query = {
        "recall@1": [full[str(q)]["recall_1"] for q in range(nq)],
        "recall@5": [full[str(q)]["recall_5"] for q in range(nq)],
        "recall@10": [full[str(q)]["recall_10"] for q in range(nq)],
        "mrr@10": [cut[str(q)]["recip_rank"] for q in range(nq)],
        "ndcg@10": [full[str(q)]["ndcg_cut_10"] for q in range(nq)],
    }
    for name, values in per_query.items():
        assert 0.0 < sum(values) < nq, name  # neither all misses nor all perfect: a real check
        mine_q = [
            retrieval_metric_sums(top.indices[q : q + 1], relevant[q : q + 1])[name][0]
            for q in range(nq)
        ]
        assert mine_q == pytest.approx(values, abs=1e-9), name
        assert mine[name] == (pytest.approx(sum(values), abs=1e-9), nq)
    assert retrieval_metrics(top.indices, relevant) == pytest.approx(
        {name: sum(values) / nq for name, values in per_query.items()}, abs=1e-9
    )
