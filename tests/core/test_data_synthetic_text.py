"""synthetic_text_dataset: random token rows, the same for an index and seed in any order, of
fixed or drawn lengths, ended by EOS, packable; bad arguments name themselves."""

from __future__ import annotations

import pytest
import torch
from _shared import REPO

from automodel.core.data import DataError, pack_dataset, synthetic_text_dataset
from automodel.core.models import load_tokenizer

TOKENIZER = REPO / "examples/llm_finetune/assets/tiny_tokenizer"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(TOKENIZER))


def test_rows_are_random_ids_of_the_vocabulary_fixed_by_index_and_seed(tokenizer):
    rows = synthetic_text_dataset(tokenizer, num_samples=6, seq_length=40, seed=3)
    assert len(rows) == 6 and rows.pad_token_id == tokenizer.pad_token_id
    backwards = [rows[i] for i in reversed(range(6))][::-1]
    for i, item in enumerate(backwards):
        again = rows[i]
        assert torch.equal(item["input_ids"], again["input_ids"])  # any order, same row
        assert torch.equal(item["labels"], item["input_ids"])  # every token a target
        assert item["input_ids"].shape == (40,) and item["input_ids"].dtype == torch.long
        assert int(item["input_ids"][-1]) == tokenizer.eos_token_id
        assert int(item["input_ids"].min()) >= 0 and int(item["input_ids"].max()) < len(tokenizer)
    assert not torch.equal(rows[0]["input_ids"], rows[1]["input_ids"])
    other = synthetic_text_dataset(tokenizer, num_samples=6, seq_length=40, seed=4)
    assert not torch.equal(rows[0]["input_ids"], other[0]["input_ids"])
    assert torch.equal(rows[-1]["input_ids"], rows[5]["input_ids"])
    with pytest.raises(IndexError, match="out of range for 6 samples"):
        rows[6]


def test_drawn_lengths_stay_within_bounds_and_pack(tokenizer):
    rows = synthetic_text_dataset(
        tokenizer, num_samples=50, seq_length=20, length_std=6, max_length=30, vocab_size=50
    )
    lengths = rows.lengths()
    assert lengths.tolist() == [len(rows[i]["input_ids"]) for i in range(50)]
    assert int(lengths.min()) >= 1 and int(lengths.max()) <= 30
    assert len(set(lengths.tolist())) > 5 and abs(float(lengths.float().mean()) - 20) < 3
    assert int(max(int(rows[i]["input_ids"].max()) for i in range(50))) < 50
    packed = pack_dataset(rows, 64)
    assert sum(int((packed[i]["labels"] != -100).sum()) for i in range(len(packed))) == (
        int(lengths.sum()) - 50  # each document's first label is not a target once packed
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "num_samples must be an integer >= 1, got 0"),
        ({"seq_length": 1.5}, "seq_length must be an integer >= 1, got 1.5"),
        ({"length_std": -1}, "length_std must be >= 0, got -1"),
        ({"max_length": 0}, "max_length must be an integer >= 1, got 0"),
        ({"vocab_size": 1}, "vocab_size must be an integer >= 2, got 1"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, message, tokenizer):
    with pytest.raises(DataError, match=message):
        synthetic_text_dataset(tokenizer, **kwargs)
    with pytest.raises(DataError, match="give vocab_size"):
        synthetic_text_dataset(None)
