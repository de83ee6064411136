"""Tests of the retrieval losses: InfoNCE against hand-built score matrices, listwise CE, and the
cross-rank gather on two gloo processes (this file is also that torchrun worker).

The two-process check: ranks encode halves of one global batch with the same tiny linear encoder,
each loss normalised by the global query count and multiplied by the world size, gradients
averaged like DDP; they must equal one process's gradient of the whole batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from automodel.core.losses import contrastive_loss, listwise_cross_entropy

NQ, G, D = 4, 3, 8
TOL = {"rtol": 1e-5, "atol": 1e-6}


def embeddings(seed: int = 0, nq: int = NQ, g: int = G, dtype=torch.float32):
    """Leaf queries [nq, D] and passages [nq * g, D], normalised like an embedding model's."""
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(nq, D, generator=gen), dim=-1).to(dtype)
    p = F.normalize(torch.randn(nq * g, D, generator=gen), dim=-1).to(dtype)
    return q.requires_grad_(True), p.requires_grad_(True)


def leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def reference(q, p, temperature: float, in_batch_negatives: bool, g: int = G):
    """Mean CE over a score matrix filled entry by entry: every passage, or each query's own g."""
    nq = q.shape[0]
    q, p = q.float(), p.float()
    if in_batch_negatives:
        scores = torch.stack([torch.stack([q[i] @ p[j] for j in range(len(p))]) for i in range(nq)])
        targets = torch.tensor([i * g for i in range(nq)])
    else:
        scores = torch.stack(
            [torch.stack([q[i] @ p[i * g + j] for j in range(g)]) for i in range(nq)]
        )
        targets = torch.zeros(nq, dtype=torch.long)
    return F.cross_entropy(scores / temperature, targets)


@pytest.mark.parametrize("in_batch_negatives", [True, False])
@pytest.mark.parametrize("g", [1, G])
def test_matches_a_hand_built_score_matrix(in_batch_negatives: bool, g: int):
    mine = embeddings(seed=g, g=g)
    ref = leaves(*mine)
    loss = contrastive_loss(*mine, temperature=0.1, in_batch_negatives=in_batch_negatives)
    expected = reference(*ref, 0.1, in_batch_negatives, g=g)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, **TOL)
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad, **TOL)


def test_in_batch_negatives_add_the_other_queries_passages():
    q, p = embeddings()
    own = contrastive_loss(q, p, in_batch_negatives=False)
    every = contrastive_loss(q, p, in_batch_negatives=True)
    assert every > own  # more negatives in each softmax: strictly more loss
    # Without in-batch negatives, another query's passages do not matter.
    p_other = p.detach().clone()
    p_other[G:] = torch.randn_like(p_other[G:])
    torch.testing.assert_close(
        contrastive_loss(q[:1], p_other[:G], in_batch_negatives=False),
        contrastive_loss(q[:1], p[:G], in_batch_negatives=False),
    )


def test_bf16_embeddings_score_in_float32():
    q, p = embeddings(dtype=torch.bfloat16)
    loss = contrastive_loss(q, p)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference(q, p, 0.05, True), **TOL)


def test_temperature_divides_the_scores():
    q, p = embeddings()
    torch.testing.assert_close(
        contrastive_loss(q, p, temperature=0.1), contrastive_loss(q * 10, p, temperature=1.0)
    )
    # Queries aligned with their positives: a colder softmax is more confident, less loss.
    aligned = p.detach()[::G] + 0.1 * q.detach()
    losses = [contrastive_loss(aligned, p, temperature=t).item() for t in (1.0, 0.1, 0.01)]
    assert losses[0] > losses[1] > losses[2]


def test_num_queries_normalises_the_sum():
    q, p = embeddings()
    per_batch = contrastive_loss(q, p)
    torch.testing.assert_close(contrastive_loss(q, p, num_queries=4 * NQ), per_batch / 4)
    torch.testing.assert_close(
        contrastive_loss(q, p, num_queries=torch.tensor(4 * NQ)), per_batch / 4
    )


@pytest.mark.parametrize("loss_of", ["own_passages", "listwise"])
def test_micro_batches_over_the_step_queries_equal_the_whole_batch(loss_of: str):
    """Two micro-batches, each over the step's query count: loss and grads of the whole batch.

    (With in-batch negatives a micro-batch sees fewer negatives, so only the per-query losses
    are batch-independent.)
    """

    def loss_fn(q, p, num_queries=None):
        if loss_of == "listwise":
            scores = (q.unsqueeze(1) * p.view(q.shape[0], G, D)).sum(-1) * 7.0
            return listwise_cross_entropy(scores, num_queries)
        return contrastive_loss(q, p, in_batch_negatives=False, num_queries=num_queries)

    q, p = embeddings(nq=5)
    whole_q, whole_p = leaves(q, p)
    whole = loss_fn(whole_q, whole_p)
    whole.backward()
    split = 2  # micro-batches of 2 and 3 queries
    first = loss_fn(q[:split], p[: split * G], num_queries=5)
    second = loss_fn(q[split:], p[split * G :], num_queries=5)
    (first + second).backward()
    torch.testing.assert_close(first + second, whole, **TOL)
    torch.testing.assert_close(q.grad, whole_q.grad, **TOL)
    torch.testing.assert_close(p.grad, whole_p.grad, **TOL)


def test_listwise_matches_cross_entropy_with_the_positive_first():
    scores = torch.randn(5, 4, dtype=torch.float64)
    mine, ref = leaves(scores, scores)
    loss = listwise_cross_entropy(mine)
    expected = F.cross_entropy(ref, torch.zeros(5, dtype=torch.long))
    loss.backward()
    expected.backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, **TOL)
    torch.testing.assert_close(mine.grad, ref.grad, **TOL)
    # The positive is column 0: moving it elsewhere changes the loss.
    assert listwise_cross_entropy(scores.flip(1)) != loss


def test_errors_name_the_shapes():
    q, p = embeddings()
    with pytest.raises(
        ValueError, match=r"passages \(11\) must be a positive multiple of queries \(4\)"
    ):
        contrastive_loss(q, p[:11])
    with pytest.raises(ValueError, match=r"same size d"):
        contrastive_loss(q, p[:, :4])
    with pytest.raises(ValueError, match=r"same size d"):
        contrastive_loss(q[0], p)
    with pytest.raises(ValueError, match="temperature must be positive"):
        contrastive_loss(q, p, temperature=0.0)
    with pytest.raises(ValueError, match=r"scores \(4,\) must be \[nq, g\]"):
        listwise_cross_entropy(torch.randn(4))


# ------------------------------------------------------------------ two gloo processes


def test_gathered_passages_give_the_whole_batch_gradient(
    tmp_path: Path, run_torchrun, worker_results, worker_case
):
    run_torchrun(Path(__file__), str(tmp_path))
    results = worker_results(tmp_path)
    for rank in (0, 1):
        for name in ("in_batch", "own_passages"):
            case = worker_case(results, rank, name)  # gradients asserted in the worker
            assert case["loss_sum"] == pytest.approx(case["whole_loss"], rel=1e-6)
        # The gather took effect: scoring only local passages gives another loss.
        case = worker_case(results, rank, "in_batch")
        assert case["local_only_loss"] != pytest.approx(case["loss"], rel=1e-3)


GLOBAL_NQ, WORKER_G, IN, OUT = 4, 3, 6, 5


def _worker_case(in_batch_negatives: bool) -> dict:
    """One DDP-like step on this rank's half of the batch, checked against the whole batch."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same encoder and global batch on every rank
    encoder = torch.nn.Linear(IN, OUT)
    queries = torch.randn(GLOBAL_NQ, IN)
    passages = torch.randn(GLOBAL_NQ * WORKER_G, IN)
    kw = {"temperature": 0.5, "in_batch_negatives": in_batch_negatives}

    local_nq = GLOBAL_NQ // world
    q = queries[rank * local_nq : (rank + 1) * local_nq]
    p = passages[rank * local_nq * WORKER_G : (rank + 1) * local_nq * WORKER_G]
    loss = contrastive_loss(
        encoder(q), encoder(p), group=dist.group.WORLD, num_queries=GLOBAL_NQ, **kw
    )
    (loss * world).backward()
    grads = [prm.grad.clone() for prm in encoder.parameters()]
    for grad in grads:
        dist.all_reduce(grad)
        grad /= world  # DDP's mean
    loss_sum = loss.detach().clone()
    dist.all_reduce(loss_sum)

    whole = torch.nn.Linear(IN, OUT)
    whole.load_state_dict(encoder.state_dict())
    whole_loss = contrastive_loss(whole(queries), whole(passages), **kw)
    whole_loss.backward()
    for grad, prm in zip(grads, whole.parameters(), strict=True):
        torch.testing.assert_close(grad, prm.grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        local_only = contrastive_loss(encoder(q), encoder(p), num_queries=GLOBAL_NQ, **kw)
    return {
        "loss": loss.item(),
        "loss_sum": loss_sum.item(),
        "whole_loss": whole_loss.item(),
        "local_only_loss": local_only.item(),
    }


if __name__ == "__main__":  # the torchrun worker of the test above
    import torch.distributed as dist
    from worker_cases import run_cases

    dist.init_process_group("gloo")
    cases = {
        "in_batch": lambda: _worker_case(in_batch_negatives=True),
        "own_passages": lambda: _worker_case(in_batch_negatives=False),
    }
    run_cases(cases, Path(sys.argv[1]))
