"""Tests of collation, the sharded sampler and exact resume of the stateful dataloader."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from automodel.core.data import (
    IGNORE_INDEX,
    DataError,
    ShardedSampler,
    TokenizedDataset,
    build_dataloader,
    collate,
)
from automodel.core.data._dataset import SampleBuffer


def numbered_dataset(n: int) -> TokenizedDataset:
    """Sample i is [i, i, ...] of length 1 + i % 4, so batches show which samples they hold."""
    buffer = SampleBuffer()
    for i in range(n):
        tokens = [i + 1] * (1 + i % 4)
        buffer.add(input_ids=tokens, labels=tokens)
    columns, offsets = buffer.tensors()
    return TokenizedDataset(columns, offsets, pad_token_id=0)


def sample_ids(batch: dict) -> list[int]:
    return (batch["input_ids"][:, 0] - 1).tolist()


def test_collate_pads_to_longest_and_multiple() -> None:
    batch = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        {"input_ids": torch.tensor([8]), "labels": torch.tensor([8])},
    ]
    out = collate(batch, pad_token_id=3)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3]]
    assert out["labels"].tolist() == [[-100, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert "position_ids" not in out
    assert all(v.dtype == torch.long for v in out.values())
    wide = collate(batch, pad_token_id=3, pad_to_multiple_of=4)
    assert wide["input_ids"].shape == (2, 4)

    packed = collate(
        [
            {"input_ids": [1, 2], "labels": [-100, 2], "position_ids": [0, 1]},
            {"input_ids": [4], "labels": [-100], "position_ids": [0]},
        ],
        pad_token_id=0,
    )
    assert set(packed) == {"input_ids", "labels", "position_ids"}
    assert packed["position_ids"].tolist() == [[0, 1], [0, 0]]


def test_sampler_shards_are_disjoint_and_epochs_reshuffle() -> None:
    shards = [ShardedSampler(10, seed=3, dp_rank=r, dp_size=2) for r in range(2)]
    epoch0 = [list(s) for s in shards]
    assert all(len(e) == 5 for e in epoch0)
    assert sorted(epoch0[0] + epoch0[1]) == list(range(10))
    epoch1 = [list(s) for s in shards]  # a full pass moves to the next epoch
    assert shards[0].epoch == 2
    assert sorted(epoch1[0] + epoch1[1]) == list(range(10))
    assert epoch1 != epoch0
    again = ShardedSampler(10, seed=3, dp_rank=0, dp_size=2)
    assert list(again) == epoch0[0]  # deterministic from the seed
    assert ShardedSampler(10, seed=4, dp_rank=0, dp_size=2).indices(0) != epoch0[0]
    # Uneven: drop_last leaves out the tail, otherwise indices repeat so ranks stay equal.
    assert len(ShardedSampler(7, dp_rank=1, dp_size=2)) == 3
    padded = [list(ShardedSampler(7, dp_rank=r, dp_size=2, drop_last=False)) for r in range(2)]
    assert len(padded[0]) == len(padded[1]) == 4
    assert set(padded[0] + padded[1]) == set(range(7))


def run(loader: StatefulDataLoader, batches: int) -> list[list[int]]:
    """Take batches from the loader, starting new passes (epochs) as needed."""
    out: list[list[int]] = []
    while len(out) < batches:
        for batch in loader:
            out.append(sample_ids(batch))
            if len(out) == batches:
                break
    return out


@pytest.mark.parametrize("stop_after", [2, 3, 4, 6, 7])
def test_resume_continues_at_exactly_the_next_batch(stop_after: int) -> None:
    # 22 samples, 2 ranks, batch 3: 11 per rank, 3 batches per epoch (drop_last).
    dataset = numbered_dataset(22)
    total = 10  # more than three epochs

    def make(rank: int) -> StatefulDataLoader:
        return build_dataloader(dataset, batch_size=3, seed=7, dp_rank=rank, dp_size=2)

    for rank in range(2):
        reference = run(make(rank), total)
        first = make(rank)
        head: list[list[int]] = []
        iterator = iter(first)
        for _ in range(stop_after):
            try:
                head.append(sample_ids(next(iterator)))
            except StopIteration:  # end of an epoch: start the next pass
                iterator = iter(first)
                head.append(sample_ids(next(iterator)))
        state = first.state_dict()
        resumed = make(rank)
        resumed.load_state_dict(state)
        assert head + run(resumed, total - stop_after) == reference

    # Epochs reshuffle, and within each epoch the two ranks see disjoint samples.
    per_rank = [run(make(rank), 6) for rank in range(2)]
    for epoch in range(2):
        batches = [b for rank in range(2) for b in per_rank[rank][3 * epoch : 3 * epoch + 3]]
        flat = list(itertools.chain.from_iterable(batches))
        assert len(flat) == len(set(flat)) == 18
    assert per_rank[0][:3] != per_rank[0][3:6]


@pytest.mark.parametrize(("saved_dp", "new_dp"), [(2, 1), (1, 2), (2, 4)])
def test_resume_on_another_data_parallel_size_continues_the_epoch(saved_dp, new_dp) -> None:
    """Elastic resume: the new ranks together take the rest of the epoch, nothing twice."""
    dataset = numbered_dataset(48)

    def loaders(dp_size: int) -> list[StatefulDataLoader]:
        return [
            build_dataloader(dataset, batch_size=2, seed=5, dp_rank=r, dp_size=dp_size)
            for r in range(dp_size)
        ]

    before = loaders(saved_dp)
    iterators = [iter(loader) for loader in before]
    seen = [i for it in iterators for _ in range(12 // saved_dp) for i in sample_ids(next(it))]
    after = loaders(new_dp)
    for rank, loader in enumerate(after):
        loader.load_state_dict(before[rank % saved_dp].state_dict())
    rest = [i for loader in after for batch in loader for i in sample_ids(batch)]
    assert len(seen) == 24 and sorted(seen + rest) == list(range(48))
    # The samples of the epoch's order in order: the same global batches as any dp size.
    order = ShardedSampler(48, seed=5).indices(0)
    assert sorted(seen) == sorted(order[:24])


def test_resume_on_a_size_that_does_not_divide_the_position_is_refused() -> None:
    sampler = ShardedSampler(48, dp_size=2)
    with pytest.raises(ValueError, match=r"10 samples of epoch 0 .* does not divide over 4"):
        ShardedSampler(48, dp_rank=0, dp_size=4).load_state_dict(
            {**sampler.state_dict(), "yielded": 5}
        )


def test_resume_with_workers() -> None:
    dataset = numbered_dataset(40)

    def make() -> StatefulDataLoader:
        return build_dataloader(dataset, batch_size=4, seed=1, num_workers=2)

    reference = run(make(), 14)
    first = make()
    iterator = iter(first)
    head = [sample_ids(next(iterator)) for _ in range(6)]
    state = first.state_dict()
    del iterator
    resumed = make()
    resumed.load_state_dict(state)
    assert head + run(resumed, 8) == reference


def test_persistent_workers_keep_the_batches_and_need_workers() -> None:
    """torch's persistent_workers with workers: the same two epochs as without; with no worker
    processes it has nothing to keep and is off (torch would raise)."""
    dataset = numbered_dataset(16)

    def epochs(loader: StatefulDataLoader) -> list[list[int]]:
        return [ids for _ in range(2) for batch in loader for ids in [sample_ids(batch)]]

    kept = build_dataloader(dataset, batch_size=4, seed=1, num_workers=1, persistent_workers=True)
    assert kept.persistent_workers
    plain = build_dataloader(dataset, batch_size=4, seed=1, num_workers=1)
    assert epochs(kept) == epochs(plain)
    alone = build_dataloader(dataset, batch_size=4, persistent_workers=True)
    assert not alone.persistent_workers and len(list(alone)) == 4


def test_batches_are_collated_with_the_dataset_pad_token() -> None:
    loader = build_dataloader(numbered_dataset(8), batch_size=4, shuffle=False)
    batch = next(iter(loader))
    assert batch["input_ids"].tolist() == [[1, 0, 0, 0], [2, 2, 0, 0], [3, 3, 3, 0], [4, 4, 4, 4]]
    assert (batch["labels"] == IGNORE_INDEX).sum() == 6
    with pytest.raises(DataError, match="not enough for one batch"):
        build_dataloader(numbered_dataset(8), batch_size=5, dp_size=2)
