"""Tests of automodel.core.data loading and formats: label masking, truncation, error messages."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from automodel.core.config import UserError
from automodel.core.data import (
    IGNORE_INDEX,
    DataError,
    chat_dataset,
    chat_labels,
    instruction_dataset,
    load_rows,
    squad_dataset,
    text_dataset,
)

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital."},
    {"role": "user", "content": "And of Germany?"},
    {"role": "assistant", "content": "Berlin."},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def cache(tmp_path: Path) -> str:
    return str(tmp_path / "hf-cache")


def labeled_spans(sample: dict) -> list[list[int]]:
    """The runs of consecutive positions that carry a label, as lists of label tokens."""
    spans: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in sample["labels"].tolist():
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(label)
        previous = label
    return spans


def check_unshifted(sample: dict) -> None:
    ids, labels = sample["input_ids"], sample["labels"]
    assert ids.shape == labels.shape
    kept = labels != IGNORE_INDEX
    assert (labels[kept] == ids[kept]).all()


# ---------------------------------------------------------------- loading


def test_malformed_jsonl_names_file_and_line(tmp_path: Path, cache: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n\n{"text": "c"\n{"text": "d"}\n')
    with pytest.raises(DataError) as info:
        load_rows(path, cache_dir=cache)
    assert isinstance(info.value, UserError)
    assert f"{path}:4" in str(info.value)
    assert "line 4" in str(info.value)


def test_jsonl_line_that_is_not_an_object_is_reported(tmp_path: Path, cache: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: line 2 is a JSON list"):
        load_rows(path, cache_dir=cache)


def test_empty_file_and_missing_file(tmp_path: Path, cache: str) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n")
    with pytest.raises(DataError, match="empty"):
        load_rows(empty, cache_dir=cache)
    with pytest.raises(DataError, match="not found"):
        load_rows(tmp_path / "nope.jsonl", cache_dir=cache)
    with pytest.raises(DataError, match="unknown data file type"):
        (tmp_path / "data.xyz").write_text("x")
        load_rows(tmp_path / "data.xyz", cache_dir=cache)


def test_loads_parquet_and_csv_by_suffix(tmp_path: Path, cache: str, tokenizer) -> None:
    import datasets

    rows = {"q": ["What is two?", "Who?"], "a": ["2", "me"]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_dict(rows).to_csv(str(tmp_path / "d.csv"), index=False)
    for name in ("d.parquet", "d.csv"):
        loaded = load_rows(tmp_path / name, cache_dir=cache)
        assert loaded.column_names == ["q", "a"]
        assert loaded["a"] == ["2", "me"]
    sliced = load_rows(tmp_path / "d.parquet", split="train[:1]", cache_dir=cache)
    assert len(sliced) == 1


def test_small_local_json_reads_like_datasets(tmp_path: Path, cache: str) -> None:
    """Read directly (no `datasets`), a small JSONL or JSON list gives the rows, columns (in order
    of first appearance, absent keys as None) and batches that `datasets` gives."""
    import datasets

    rows = [{"q": "a", "n": 1}, {"q": "b", "extra": [1, 2]}, {"n": 3, "q": "c"}]
    lines = write_jsonl(tmp_path / "d.jsonl", rows)
    document = tmp_path / "d.json"
    document.write_text(json.dumps(rows))
    expected = datasets.load_dataset("json", data_files=str(lines), split="train", cache_dir=cache)
    for path in (lines, document):
        loaded = load_rows(path, cache_dir=cache)
        assert type(loaded).__name__ == "JsonRows"
        assert (len(loaded), loaded.column_names) == (3, ["q", "n", "extra"])
        assert loaded.column_names == expected.column_names
        for column in loaded.column_names:
            assert loaded[column] == expected[column], column
        assert loaded[1] == expected[1]
        assert list(loaded.iter(batch_size=2)) == list(expected.iter(batch_size=2))
        with pytest.raises(KeyError):
            loaded["nope"]
    # A slice of the split still goes through `datasets`, which parses it.
    assert load_rows(lines, split="train[:2]", cache_dir=cache)["q"] == ["a", "b"]


def test_shuffle_seed_takes_the_rows_datasets_shuffle_gives(tmp_path: Path, cache: str) -> None:
    """`shuffle_seed` shuffles the whole split, then slices: the rows (and order)
    `datasets.Dataset.shuffle(seed)` then `select` give, from JSONL and parquet alike."""
    import datasets

    rows = [{"q": f"q{i}", "n": i} for i in range(50)]
    lines = write_jsonl(tmp_path / "d.jsonl", rows)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    full = datasets.load_dataset("json", data_files=str(lines), split="train", cache_dir=cache)
    expected = full.shuffle(seed=7)
    for path in (lines, tmp_path / "d.parquet"):
        assert (
            load_rows(path, "train[:10]", shuffle_seed=7, cache_dir=cache)["n"]
            == (expected["n"][:10])
        )
        assert (
            load_rows(path, "train[-5:]", shuffle_seed=7, cache_dir=cache)["n"]
            == (expected["n"][-5:])
        )
        assert load_rows(path, shuffle_seed=7, cache_dir=cache)["n"] == expected["n"]
    assert load_rows(lines, "train[:10]", cache_dir=cache)["n"] == list(range(10))
    with pytest.raises(DataError, match="slice the split with row numbers"):
        load_rows(lines, "train[:10%]", shuffle_seed=7, cache_dir=cache)


def test_missing_column_lists_present_columns(tmp_path: Path, cache: str, tokenizer) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [{"context": "c", "query": "q", "answers": "a"}])
    with pytest.raises(DataError) as info:
        squad_dataset(tokenizer, path, cache_dir=cache)
    message = str(info.value)
    assert "'question'" in message
    assert "context, query, answers" in message


# ---------------------------------------------------------------- formats


def test_squad_loss_only_on_answer_and_eos(tmp_path: Path, cache: str, tokenizer) -> None:
    rows = [
        {
            "context": "Paris is the capital of France.",
            "question": "What is the capital of France?",
            "answers": {"text": ["Paris"], "answer_start": [0]},
        },
        {"context": "The sky is blue.", "question": "What color?", "answers": "blue"},
    ]
    path = write_jsonl(tmp_path / "squad.jsonl", rows)
    dataset = squad_dataset(tokenizer, path, cache_dir=cache)
    assert len(dataset) == 2
    for sample, answer in zip(dataset, ["Paris", "blue"], strict=True):
        check_unshifted(sample)
        spans = labeled_spans(sample)
        assert len(spans) == 1
        assert tokenizer.decode(spans[0]) == f" {answer}</s>"
        ids = sample["input_ids"].tolist()
        assert ids[0] == tokenizer.bos_token_id
        prompt = tokenizer.decode(ids[: len(ids) - len(spans[0])])
        assert prompt.startswith("<s>Context: ")
        assert prompt.endswith("\nAnswer:")


def test_chat_loss_only_on_assistant_turns(tmp_path: Path, cache: str, tokenizer) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    dataset = chat_dataset(tokenizer, path, cache_dir=cache)
    sample = dataset[0]
    check_unshifted(sample)
    spans = [tokenizer.decode(s) for s in labeled_spans(sample)]
    assert spans == ["Paris is the capital.<|end|>\n", "Berlin.<|end|>\n"]
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(sample["input_ids"]) == rendered


def test_chat_generation_markers_give_the_same_labels(tokenizer) -> None:
    template = tokenizer.chat_template
    marked = template.replace(
        "{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}",
        "{% if m['role'] == 'assistant' %}{{ '<|assistant|>\n' }}{% generation %}"
        "{{ m['content'] + '<|end|>\n' }}{% endgeneration %}"
        "{% else %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endif %}",
    )
    assert marked != template
    by_prefixes = chat_labels(tokenizer, CONVERSATION)
    by_markers = chat_labels(tokenizer, CONVERSATION, chat_template=marked)
    assert by_markers == by_prefixes


def test_chat_dataset_encodes_a_batch_as_each_conversation_alone(
    tmp_path: Path, cache: str, tokenizer
) -> None:
    """Batched encoding (one call per 256 rows with {% generation %} markers) keeps each
    conversation's tokens and labels, and skips only the ones with no assistant turn."""
    template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
        "{% generation %}{{ m['content'] + '<|end|>\n' }}{% endgeneration %}"
        "{% else %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endif %}"
        "{% endfor %}"
    )
    no_answer = [{"role": "user", "content": "hi"}]
    short = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    rows = [CONVERSATION, no_answer, short, CONVERSATION[1:3], no_answer] * 60  # 300: 2 batches
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in rows])
    dataset = chat_dataset(tokenizer, path, chat_template=template, cache_dir=cache)
    kept = [m for m in rows if m is not no_answer]
    assert (len(dataset), dataset.num_dropped) == (len(kept), 120)
    for index in (0, 1, 2, 179):
        ids, labels = chat_labels(tokenizer, kept[index], chat_template=template)
        assert dataset[index]["input_ids"].tolist() == ids
        assert dataset[index]["labels"].tolist() == labels


def test_chat_template_that_rewrites_history_is_rejected(tokenizer) -> None:
    # Renders only the last assistant turn in full: earlier turns change once more are added.
    template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
        "{{ '<|assistant|>\n...<|end|>\n' }}{% else %}"
        "{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    )
    with pytest.raises(DataError, match="assistant message 2"):
        chat_labels(tokenizer, CONVERSATION, chat_template=template)


def test_chat_bad_messages_and_no_assistant(tmp_path: Path, cache: str, tokenizer) -> None:
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": CONVERSATION}, {"messages": [{"role": "user", "content": "hi"}]}],
    )
    dataset = chat_dataset(tokenizer, path, cache_dir=cache)
    assert len(dataset) == 1 and dataset.num_dropped == 1

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": CONVERSATION}, {"messages": "hello"}])
    with pytest.raises(DataError, match="sample 1: expected a list of messages"):
        chat_dataset(tokenizer, bad, cache_dir=cache)

    only_users = write_jsonl(
        tmp_path / "users.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}]
    )
    with pytest.raises(DataError, match="no samples left"):
        chat_dataset(tokenizer, only_users, cache_dir=cache)


def test_instruction_column_mapping(tmp_path: Path, cache: str, tokenizer) -> None:
    rows = [
        {"input": "What is two plus two?", "output": "four", "ctx": "Arithmetic."},
        {"input": "Say hello.", "output": "hello", "ctx": ""},
    ]
    path = write_jsonl(tmp_path / "inst.jsonl", rows)
    mapping = {"question": "input", "answer": "output", "context": "ctx"}
    dataset = instruction_dataset(tokenizer, path, column_mapping=mapping, cache_dir=cache)
    first, second = dataset[0], dataset[1]
    for sample, answer in ((first, "four"), (second, "hello")):
        check_unshifted(sample)
        assert [tokenizer.decode(s) for s in labeled_spans(sample)] == [f" {answer}</s>"]
    assert "Context: Arithmetic." in tokenizer.decode(first["input_ids"])
    assert "Context" not in tokenizer.decode(second["input_ids"])

    no_context = instruction_dataset(
        tokenizer, path, column_mapping={"question": "input", "answer": "output"}, cache_dir=cache
    )
    assert tokenizer.decode(no_context[0]["input_ids"]).startswith("<s>Question: What is two")

    with pytest.raises(
        DataError,
        match="missing columns 'question', 'answer'; the dataset has columns: input, output, ctx",
    ):
        instruction_dataset(tokenizer, path, cache_dir=cache)
    with pytest.raises(DataError, match="column_mapping must map"):
        instruction_dataset(tokenizer, path, column_mapping={"prompt": "input"}, cache_dir=cache)


def test_text_loss_on_every_token(tmp_path: Path, cache: str, tokenizer) -> None:
    path = write_jsonl(
        tmp_path / "text.jsonl",
        [{"body": "Once upon a time."}, {"body": ""}, {"body": "The lazy dog."}],
    )
    dataset = text_dataset(tokenizer, path, text_column="body", cache_dir=cache)
    assert len(dataset) == 2 and dataset.num_dropped == 1
    sample = dataset[0]
    assert sample["labels"].tolist() == sample["input_ids"].tolist()
    assert tokenizer.decode(sample["input_ids"]) == "<s>Once upon a time.</s>"


# ---------------------------------------------------------------- truncation


@pytest.fixture
def mixed_lengths(tmp_path: Path) -> Path:
    rows = [{"text": "one two"}, {"text": "one two three four five " * 8}, {"text": "dog"}]
    return write_jsonl(tmp_path / "text.jsonl", rows)


def test_truncate_is_default_and_logged(mixed_lengths, cache, tokenizer, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="automodel.core.data"):
        dataset = text_dataset(tokenizer, mixed_lengths, seq_length=12, cache_dir=cache)
    assert len(dataset) == 3
    assert dataset.num_truncated == 1 and dataset.num_dropped == 0
    assert dataset.lengths().tolist()[1] == 12
    assert "1 of 3 samples truncated to seq_length=12" in caplog.text


def test_truncate_drops_samples_left_without_targets(tmp_path, cache, tokenizer) -> None:
    rows = [
        {"context": "long " * 40, "question": "q?", "answers": "yes"},
        {"context": "c", "question": "q?", "answers": "yes"},
    ]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    short = squad_dataset(tokenizer, path, cache_dir=cache).lengths().tolist()[1]
    dataset = squad_dataset(tokenizer, path, seq_length=short, cache_dir=cache)
    assert len(dataset) == 1
    assert dataset.num_truncated == 1 and dataset.num_dropped == 1


def test_drop_counts_and_logs(mixed_lengths, cache, tokenizer, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="automodel.core.data"):
        dataset = text_dataset(
            tokenizer, mixed_lengths, seq_length=12, truncation="drop", cache_dir=cache
        )
    assert len(dataset) == 2
    assert dataset.num_dropped == 1 and dataset.num_truncated == 0
    assert "1 dropped as longer than seq_length" in caplog.text
    with pytest.raises(DataError, match=r"no samples left out of 3 \(3 longer than seq_length=2"):
        text_dataset(tokenizer, mixed_lengths, seq_length=2, truncation="drop", cache_dir=cache)


def test_error_names_sample_and_length(mixed_lengths, cache, tokenizer) -> None:
    full = text_dataset(tokenizer, mixed_lengths, cache_dir=cache)
    length = full.lengths().tolist()[1]
    with pytest.raises(DataError, match=f"sample 1 has {length} tokens, more than seq_length=12"):
        text_dataset(tokenizer, mixed_lengths, seq_length=12, truncation="error", cache_dir=cache)
    with pytest.raises(DataError, match="truncation must be one of"):
        text_dataset(tokenizer, mixed_lengths, truncation="cut", cache_dir=cache)


def test_chunk_splits_long_text_into_consecutive_samples(
    tmp_path: Path, cache: str, tokenizer, caplog
) -> None:
    rows = [{"text": "one two three four five " * 8}, {"text": "dog"}, {"text": "a b " * 30}]
    path = write_jsonl(tmp_path / "text.jsonl", rows)
    whole = text_dataset(tokenizer, path, cache_dir=cache)
    documents = [whole[i]["input_ids"].tolist() for i in range(len(whole))]
    seq_length = 12
    assert len(documents[0]) > 2 * seq_length and len(documents[0]) % seq_length
    with caplog.at_level(logging.INFO, logger="automodel.core.data"):
        dataset = text_dataset(
            tokenizer, path, seq_length=seq_length, truncation="chunk", cache_dir=cache
        )
    expected = [-(-len(doc) // seq_length) for doc in documents]  # chunks per document
    assert len(dataset) == sum(expected)
    assert dataset.num_chunked == 2 and dataset.num_truncated == dataset.num_dropped == 0
    assert f"2 of 3 samples longer than seq_length=12 split into {expected[0] + expected[2]}" in (
        caplog.text
    )
    samples = [dataset[i] for i in range(len(dataset))]
    assert all(len(s["input_ids"]) <= seq_length for s in samples)
    for sample in samples:
        assert sample["labels"].tolist() == sample["input_ids"].tolist()
    # Every token of every document, once and in order: the chunks concatenate back to it.
    start = 0
    for doc, count in zip(documents, expected, strict=True):
        pieces = [s["input_ids"].tolist() for s in samples[start : start + count]]
        assert [t for piece in pieces for t in piece] == doc
        assert all(len(piece) == seq_length for piece in pieces[:-1])
        start += count
    assert dataset.num_tokens == whole.num_tokens


def test_chunk_is_for_plain_text_only(tmp_path: Path, cache: str, tokenizer) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    with pytest.raises(DataError, match="chunk splits plain text only"):
        chat_dataset(tokenizer, path, seq_length=8, truncation="chunk", cache_dir=cache)
