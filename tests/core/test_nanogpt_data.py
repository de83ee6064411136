"""NanoGPT / llm.c token shards (`nanogpt_dataset`): both headers, the windows NeMo AutoModel's
reader yields, BOS alignment, and files that are not shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _shared import REPO

from automodel.core.data import DataError, nanogpt_dataset, read_shard, write_shard
from automodel.core.models import load_tokenizer


def windows(dataset) -> list[list[int]]:
    return [dataset[i]["input_ids"].tolist() for i in range(len(dataset))]


def test_windows_of_seq_len_plus_one_tokens_one_after_the_other(tmp_path: Path) -> None:
    """Windows do not overlap or cross shards (their reader's `pos = end`); `seq_len` targets
    each (labels unshifted, as every pre-training dataset here); shards in sorted order."""
    write_shard(tmp_path / "b_train_000001.bin", list(range(100, 111)))
    wide = write_shard(tmp_path / "b_train_000000.bin", [*range(19), 70000])  # NanoGPT's header
    header = np.fromfile(wide, dtype=np.int32, count=4).tolist()
    assert header == [278895051, 1, 20, 4]
    assert np.fromfile(tmp_path / "b_train_000001.bin", dtype=np.int32, count=3).tolist() == [
        20240520, 1, 11,
    ]  # fmt: skip
    data = nanogpt_dataset(str(tmp_path / "b_train_*.bin"), seq_len=4)
    assert windows(data) == [
        [0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17, 18, 70000],
        [100, 101, 102, 103, 104], [105, 106, 107, 108, 109],  # 110 is left over
    ]  # fmt: skip
    sample = data[0]
    assert sample["labels"].tolist() == sample["input_ids"].tolist()
    assert sample["input_ids"].dtype.is_floating_point is False
    assert read_shard(tmp_path / "b_train_000000.bin").dtype == np.uint32
    shuffled = nanogpt_dataset(
        str(tmp_path / "b_train_*.bin"), seq_len=4, shuffle_files=True, seed=1
    )
    assert sorted(windows(shuffled)) == sorted(windows(data))


def test_windows_start_at_bos_tokens_when_aligned(tmp_path: Path) -> None:
    bos = 0
    tokens = [7, 7, bos, 1, 2, 3, 4, 5, bos, 6, bos, 8, 9, 10, 11, bos, 12]
    write_shard(tmp_path / "s.bin", tokens)
    data = nanogpt_dataset(tmp_path / "s.bin", seq_len=3, bos_token=bos, align_to_bos=True)
    # from the first BOS; the next from the first BOS after the window; [bos, 12] is too short
    assert windows(data) == [[bos, 1, 2, 3], [bos, 6, bos, 8]]


def test_files_that_are_not_shards_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no file matches"):
        nanogpt_dataset(str(tmp_path / "*.bin"), seq_len=4)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(np.arange(300, dtype=np.int32).tobytes())
    with pytest.raises(DataError, match=r"bad.bin: not a NanoGPT/llm.c token shard \(magic 0"):
        nanogpt_dataset(bad, seq_len=4)
    cut = write_shard(tmp_path / "cut.bin", list(range(10)))
    cut.write_bytes(cut.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"cut.bin: the header says 10 tokens \(1044 bytes"):
        nanogpt_dataset(cut, seq_len=4)
    short = write_shard(tmp_path / "short.bin", [1, 2, 3])
    with pytest.raises(DataError, match="no window of 5 tokens"):
        nanogpt_dataset(short, seq_len=4)
    with pytest.raises(DataError, match="align_to_bos needs bos_token"):
        nanogpt_dataset(short, seq_len=1, align_to_bos=True)

    tokenizer = load_tokenizer(REPO / "examples/llm_finetune/assets/tiny_tokenizer")
    beyond = write_shard(tmp_path / "beyond.bin", [1, len(tokenizer), 2])
    message = rf"beyond.bin holds token id {len(tokenizer)}, beyond the tokenizer's"
    with pytest.raises(DataError, match=message):
        nanogpt_dataset(beyond, seq_len=1, tokenizer=tokenizer)
    assert len(nanogpt_dataset(short, seq_len=1, tokenizer=tokenizer)) == 1
