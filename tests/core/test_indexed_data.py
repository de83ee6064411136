"""Megatron indexed datasets: the format against megatron-core's own reader and writer, token
windows, the cached orders, splits, blends with exact proportions, preprocessing, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _shared import REPO

from automodel.core.data import (
    BlendedWindows,
    DataError,
    IndexedTokens,
    TokenWindows,
    build_dataloader,
    indexed_dataset,
    preprocess_text,
    text_dataset,
    write_indexed,
)

megatron = pytest.importorskip("megatron.core.datasets.indexed_dataset")
TOKENIZER = REPO / "examples/llm_finetune/assets/tiny_tokenizer"
REVERSE_TEXT = REPO / "examples/llm_finetune/assets/reverse_text_train.jsonl"


def documents(n: int = 60, seed: int = 0, high: int = 1000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, high, int(rng.integers(1, 40))) for _ in range(n)]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_megatron_reads_ours_and_we_read_megatrons_byte_for_byte(tmp_path, dtype) -> None:
    docs = documents(high=60000 if dtype == np.uint16 else 200000)
    assert write_indexed(tmp_path / "ours", docs, dtype) == (len(docs), sum(map(len, docs)))
    theirs = megatron.IndexedDataset(str(tmp_path / "ours"))
    assert len(theirs) == len(docs)
    assert all(np.array_equal(theirs[i], d) for i, d in enumerate(docs))
    assert list(theirs.document_indices) == list(range(len(docs) + 1))

    builder = megatron.IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=dtype)
    for doc in docs:
        builder.add_item(torch.from_numpy(doc.astype(np.int64)))
        builder.end_document()
    builder.finalize(str(tmp_path / "theirs.idx"))
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (
            tmp_path / f"theirs{suffix}"
        ).read_bytes()


def test_documents_of_several_sequences_are_read_as_megatron_groups_them(tmp_path) -> None:
    """Their builder can put several sequences in one document (sentence splitting)."""
    builder = megatron.IndexedDatasetBuilder(str(tmp_path / "m.bin"), dtype=np.uint16)
    builder.add_document(torch.arange(10), [4, 6])  # one document, two sequences
    builder.add_document(torch.arange(10, 13), [3])
    builder.finalize(str(tmp_path / "m.idx"))
    ours = IndexedTokens(tmp_path / "m")
    assert len(ours) == 3 and ours.num_documents == 2
    assert list(ours.document_indices) == [0, 2, 3]
    assert [list(ours[i]) for i in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9], [10, 11, 12]]


def test_windows_cover_the_shuffled_stream_with_every_target_once(tmp_path) -> None:
    docs = documents()
    write_indexed(tmp_path / "c", docs, np.uint16)
    windows = TokenWindows(tmp_path / "c", 16, seed=3)
    stream = np.concatenate([docs[i] for i in windows.order])
    assert sorted(windows.order.tolist()) == list(range(len(docs)))
    assert len(windows) == (len(stream) - 1) // 15
    starts = []
    for i in range(len(windows)):
        sample = windows[i]
        start = int(windows.samples[i]) * 15
        assert torch.equal(sample["input_ids"], torch.from_numpy(stream[start : start + 16].astype(np.int64)))  # fmt: skip
        assert torch.equal(sample["labels"], sample["input_ids"])
        starts.append(start)
    targets = sorted(t for s in starts for t in range(s + 1, s + 16))  # positions predicted
    assert targets == list(range(1, len(windows) * 15 + 1))  # each once, none skipped
    assert sorted(windows.samples.tolist()) == list(range(len(windows)))


def test_orders_are_cached_and_rebuilt_when_the_data_changes(tmp_path, monkeypatch) -> None:
    write_indexed(tmp_path / "c", documents(), np.uint16)
    first = TokenWindows(tmp_path / "c", 16, seed=3, index_cache_dir=tmp_path / "cache")
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 3 and all(name.endswith(".npy") for name in cached)
    import automodel.core.data._token_windows as windows_module

    def refuse(*args):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(windows_module, "_shuffled", refuse)
    again = TokenWindows(tmp_path / "c", 16, seed=3, index_cache_dir=tmp_path / "cache")
    assert isinstance(again.samples, np.memmap)
    assert np.array_equal(again.samples, first.samples) and np.array_equal(again.order, first.order)
    monkeypatch.undo()
    write_indexed(tmp_path / "c", documents(seed=1), np.uint16)  # the corpus is replaced
    TokenWindows(tmp_path / "c", 16, seed=3, index_cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 6  # a second set, under a new key


def test_split_parts_are_disjoint_and_cover_the_documents(tmp_path) -> None:
    docs = [np.full(5, i) for i in range(100)]  # document i holds only token i
    write_indexed(tmp_path / "c", docs, np.uint16)
    seen = {}
    for part in ("train", "validation", "test"):
        windows = TokenWindows(tmp_path / "c", 4, split="80,15,5", part=part)
        seen[part] = set(windows.order.tolist())
    assert [len(seen[p]) for p in ("train", "validation", "test")] == [80, 15, 5]
    assert set().union(*seen.values()) == set(range(100))
    with pytest.raises(DataError, match="leaves the test part none"):
        TokenWindows(tmp_path / "c", 4, split="99,1,0", part="test")
    with pytest.raises(DataError, match="needs a split"):
        TokenWindows(tmp_path / "c", 4, part="validation")
    with pytest.raises(DataError, match="up to three non-negative shares"):
        TokenWindows(tmp_path / "c", 4, split="a,b")


def test_a_blend_keeps_its_weights_in_every_prefix(tmp_path) -> None:
    write_indexed(tmp_path / "a", [np.full(400, 1)], np.uint16)
    write_indexed(tmp_path / "b", [np.full(100, 2)], np.uint16)
    blend = indexed_dataset([0.7, str(tmp_path / "a"), 0.3, str(tmp_path / "b")], 5, num_samples=999)  # fmt: skip
    assert isinstance(blend, BlendedWindows) and len(blend) == 999
    owners = np.asarray(blend.dataset_index)
    counts = np.cumsum(np.eye(2, dtype=int)[owners], axis=0)
    n = np.arange(1, len(owners) + 1)[:, None]
    assert (np.abs(counts - n * np.array([0.7, 0.3])) <= 1).all()
    for i in (0, 1, 2, 500, 998):  # each sample comes from the dataset it is attributed to
        assert int(blend[i]["input_ids"][0]) == int(owners[i]) + 1
    # b has 24 windows and is asked for 300: it starts over, in the same order
    b = blend.datasets[1]
    reads = np.asarray(blend.sample_index)[owners == 1]
    assert reads.max() > len(b) and list(reads[: 2 * len(b)] % len(b)) == list(range(len(b))) * 2


def test_a_list_of_prefixes_blends_them_by_size_and_resumes_on_another_dp_size(tmp_path) -> None:
    write_indexed(tmp_path / "a", documents(seed=1), np.uint16)
    write_indexed(tmp_path / "b", documents(seed=2), np.uint16)
    blend = indexed_dataset([str(tmp_path / "a"), str(tmp_path / "b")], 8, num_samples=None)
    sizes = [len(d) for d in blend.datasets]
    assert len(blend) == sum(sizes) and np.allclose(blend.weights, np.array(sizes) / sum(sizes))

    def ids(loader, batches):
        out = []
        for _, batch in zip(range(batches), loader, strict=False):
            out.append(batch["input_ids"])
        return out

    whole = ids(build_dataloader(blend, 4, shuffle=False), 10**6)  # one rank, one epoch
    ranks = [build_dataloader(blend, 2, shuffle=False, dp_rank=r, dp_size=2) for r in (0, 1)]
    for loader in ranks:
        ids(loader, 3)  # 3 steps of global batch 4 on 2 ranks
    one = build_dataloader(blend, 4, shuffle=False)
    one.load_state_dict(ranks[0].state_dict())  # resumed on 1 rank
    rest = ids(one, 10**6)
    assert len(rest) == len(whole) - 3
    assert all(torch.equal(a, b) for a, b in zip(rest, whole[3:], strict=True))


def test_preprocessing_writes_what_text_dataset_tokenizes_the_same_for_any_workers(
    tmp_path,
) -> None:
    from automodel.core.models import load_tokenizer

    lines = REVERSE_TEXT.read_text().splitlines()[:300]
    source = tmp_path / "text.jsonl"
    source.write_text("\n".join([*lines[:100], '{"text": ""}', *lines[100:]]) + "\n")
    one = preprocess_text([source], tmp_path / "one", TOKENIZER, workers=1, batch_size=64, progress=False)  # fmt: skip
    two = preprocess_text([source], tmp_path / "two", TOKENIZER, workers=2, batch_size=16, progress=False)  # fmt: skip
    assert (one.documents, one.skipped, one.dtype) == (300, 1, "uint16")
    assert (two.documents, two.tokens, two.skipped) == (one.documents, one.tokens, one.skipped)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"one{suffix}").read_bytes() == (tmp_path / f"two{suffix}").read_bytes()
    expected = text_dataset(load_tokenizer(TOKENIZER), source)
    ours = IndexedTokens(tmp_path / "one")
    assert len(ours) == len(expected) == 300
    for i in range(300):
        assert ours[i].tolist() == expected[i]["input_ids"].tolist()
    assert one.tokens == sum(len(expected[i]["input_ids"]) for i in range(300))


def test_bad_files_and_paths_are_named(tmp_path) -> None:
    write_indexed(tmp_path / "c", documents(), np.uint16)
    with pytest.raises(DataError, match=r"missing\.bin does not exist"):
        IndexedTokens(tmp_path / "missing")
    (tmp_path / "bad.bin").write_bytes(b"\0" * 8)
    (tmp_path / "bad.idx").write_bytes(b"not an index at all, really not" * 2)
    with pytest.raises(DataError, match="not a Megatron index file"):
        IndexedTokens(tmp_path / "bad")
    (tmp_path / "short.idx").write_bytes((tmp_path / "c.idx").read_bytes())
    (tmp_path / "short.bin").write_bytes((tmp_path / "c.bin").read_bytes()[:100])
    with pytest.raises(DataError, match="shorter than its index says"):
        IndexedTokens(tmp_path / "short")
    (tmp_path / "cut.idx").write_bytes((tmp_path / "c.idx").read_bytes()[:200])
    (tmp_path / "cut.bin").write_bytes((tmp_path / "c.bin").read_bytes())
    with pytest.raises(DataError, match="truncated"):
        IndexedTokens(tmp_path / "cut")
    prefix = str(tmp_path / "c")
    for paths, message in [
        ([], "paths is empty"),
        ([0.5, prefix, 0.5], "weight, prefix pairs"),
        ([0.0, prefix, 1.0, prefix], "must be > 0"),
        (str(tmp_path / "nothing_*"), "no .bin/.idx files match"),
        ([0.5, str(tmp_path / "c*"), 0.5, prefix], "a weight applies to one prefix"),
    ]:
        with pytest.raises(DataError, match=message):
            indexed_dataset(paths, 8)
    with pytest.raises(DataError, match="not enough for one sample"):
        indexed_dataset(prefix, 100_000)
    from automodel.core.models import load_tokenizer

    with pytest.raises(DataError, match="tokenized with another tokenizer"):
        indexed_dataset(prefix, 8, tokenizer=load_tokenizer(TOKENIZER))  # ids up to 999 > 32
    with pytest.raises(DataError, match="do not fit uint16"):
        write_indexed(tmp_path / "wide", [np.array([70000])], np.uint16)
    assert not (tmp_path / "wide.bin").exists()  # nothing half-written


def test_datasets_pickle_small_and_read_alike_in_dataloader_workers(tmp_path) -> None:
    import pickle

    write_indexed(tmp_path / "a", documents(seed=1), np.uint16)
    write_indexed(tmp_path / "b", documents(seed=2), np.uint16)
    blend = indexed_dataset([0.6, str(tmp_path / "a"), 0.4, str(tmp_path / "b")], 8, num_samples=50)
    data = pickle.dumps(blend)
    assert len(data) < 4096  # rebuilt from the cache, not its arrays copied
    copy = pickle.loads(data)
    assert all(torch.equal(copy[i]["input_ids"], blend[i]["input_ids"]) for i in range(50))
    ours = [b["input_ids"] for b in build_dataloader(blend, 5, shuffle=False)]
    workers = [b["input_ids"] for b in build_dataloader(blend, 5, shuffle=False, num_workers=2)]
    assert len(ours) == 10 and all(torch.equal(a, b) for a, b in zip(ours, workers, strict=True))
