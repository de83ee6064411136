"""streaming_text_dataset: windows of a `datasets` stream, sharded over data-parallel ranks,
resumed exactly from the dataloader's state."""

from __future__ import annotations

import json

import pytest
import torch
from _shared import REPO

from automodel.core.data import DataError, build_dataloader, streaming_text_dataset

TOKENIZER = REPO / "examples/llm_finetune/assets/tiny_tokenizer"


@pytest.fixture(scope="module")
def tokenizer():
    from automodel.core.models import load_tokenizer

    return load_tokenizer(TOKENIZER)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    lines = (
        (REPO / "examples/llm_finetune/assets/reverse_text_train.jsonl").read_text().splitlines()
    )
    path = tmp_path_factory.mktemp("stream") / "text.jsonl"
    path.write_text("\n".join(lines[:200]) + "\n")
    return path


def stream_of(tokenizer, rows: list[str]) -> list[int]:
    out = []
    for text in rows:
        out += [*tokenizer(text, add_special_tokens=True)["input_ids"], tokenizer.eos_token_id]
    return out


def windows(loader, n: int | None = None) -> list[torch.Tensor]:
    out = []
    for batch in loader:
        out += list(batch["input_ids"])
        if n is not None and len(out) >= n:
            break
    return out


def test_windows_follow_each_ranks_documents_and_resume_exactly(tokenizer, source) -> None:
    texts = [json.loads(line)["text"] for line in source.read_text().splitlines()]
    for rank in (0, 1):
        dataset = streaming_text_dataset(tokenizer, str(source), 16)
        got = windows(build_dataloader(dataset, 4, dp_rank=rank, dp_size=2, drop_last=False))
        stream = stream_of(tokenizer, texts[rank::2])  # every other document
        assert len(got) == (len(stream) - 1) // 15
        for i, window in enumerate(got):
            assert window.tolist() == stream[i * 15 : i * 15 + 16]

    loader = build_dataloader(streaming_text_dataset(tokenizer, str(source), 16), 4)
    iterator = iter(loader)
    for _ in range(7):
        next(iterator)
    state = loader.state_dict()
    rest = [b["input_ids"] for b in iterator]
    again = build_dataloader(streaming_text_dataset(tokenizer, str(source), 16), 4)
    again.load_state_dict(state)
    resumed = [b["input_ids"] for b in again]
    assert len(resumed) == len(rest) > 0
    assert all(torch.equal(a, b) for a, b in zip(resumed, rest, strict=True))


def test_a_stream_position_does_not_convert_between_layouts(tokenizer, source) -> None:
    loader = build_dataloader(streaming_text_dataset(tokenizer, str(source), 16), 4)
    next(iter(loader))
    other = build_dataloader(streaming_text_dataset(tokenizer, str(source), 16), 2, dp_rank=0, dp_size=2)  # fmt: skip
    other.load_state_dict(loader.state_dict())
    with pytest.raises(DataError, match="does not convert between layouts"):
        next(iter(other))


def test_bad_streams_are_named(tokenizer, tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        streaming_text_dataset(tokenizer, str(tmp_path / "missing.jsonl"), 16)
    path = tmp_path / "other.jsonl"
    path.write_text('{"body": "dog cat"}\n')
    with pytest.raises(DataError, match="no column 'text'"):
        next(iter(streaming_text_dataset(tokenizer, str(path), 16)))
