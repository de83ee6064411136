"""prompt_format="nemo_automodel": the tokens and labels NeMo AutoModel's builders make.

The expected values follow their rules (datasets/llm/formatting_utils.py, squad.py,
column_mapped_text_instruction_dataset.py, and the SFTSingleTurnPreprocessor of their
HellaSwag), written here with the tokenizer alone. Their samples come shifted (inputs
`ids[:-1]`, labels `ids[1:]`); ours are not, so a sample matches theirs when its inputs less the
last are their inputs and its labels after `shift_labels` (what the loss sees) are theirs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from automodel.core.data import (
    IGNORE_INDEX,
    DataError,
    hellaswag_dataset,
    instruction_dataset,
    squad_dataset,
)
from automodel.core.losses import shift_labels

SQUAD = [
    {
        "context": "Paris is the capital of France.",
        "question": "What is the capital of France?",
        "answers": {"text": [" the capital "], "answer_start": [6]},
    },
    {"context": "The sky is blue.", "question": "What color?", "answers": {"text": ["blue"]}},
]


def marked(template: str) -> str:
    """The test template with its assistant text marked for the tokenizer's assistant mask."""
    out = template.replace(
        "{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}",
        "{% if m['role'] == 'assistant' %}{{ '<|assistant|>\n' }}{% generation %}"
        "{{ m['content'] + '<|end|>\n' }}{% endgeneration %}"
        "{% else %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endif %}",
    )
    assert out != template
    return out


@pytest.fixture
def rows(tmp_path: Path):
    def _rows(name: str, data: list[dict]) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
        return path

    return _rows


@pytest.fixture(scope="module", params=[{}, {"add_bos_token": True}], ids=["bos", "add_bos_token"])
def plain(request, tokenizer_dir: Path):
    """The test tokenizer without a chat template. Both add a BOS; only one says so in
    `add_bos_token`, which their count of prompt tokens reads."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir, chat_template=None, **request.param)


def squad_prompt(row: dict) -> str:
    return f"Context: {row['context']} Question: {row['question']} Answer: "


def squad_turns(row: dict, answer: str) -> list[dict]:
    return [
        {"role": "user", "content": squad_prompt(row)},
        {"role": "assistant", "content": answer},
    ]


def their_text(tok, prompt: str, answer: str, answer_only: bool = True):
    """format_prompt_completion: one text; unlabeled = the prompt alone (+ BOS if add_bos_token)."""
    ids = tok(prompt + answer)["input_ids"]
    n = 0
    if answer_only:
        n = len(tok(prompt, add_special_tokens=False)["input_ids"])
        n += 1 if getattr(tok, "add_bos_token", False) else 0
    labels = [t if j >= n else IGNORE_INDEX for j, t in enumerate(ids)]
    return ids[:-1], labels[1:]


def their_chat(tok, messages: list[dict], template: str, answer_only: bool = True):
    """format_chat_template: assistant mask of {% generation %}, else prefix token lengths."""
    kwargs = {"chat_template": template, "tokenize": True, "return_dict": True}
    if "{% generation %}" in template:
        out = tok.apply_chat_template(messages, return_assistant_tokens_mask=True, **kwargs)
        ids, mask = out["input_ids"], out["assistant_masks"]
    else:
        ids = tok.apply_chat_template(messages, **kwargs)["input_ids"]
        mask = [not answer_only] * len(ids)
        for i, m in enumerate(messages):
            if answer_only and m["role"] == "assistant":
                start = len(tok.apply_chat_template(messages[:i], **kwargs)["input_ids"])
                end = len(tok.apply_chat_template(messages[: i + 1], **kwargs)["input_ids"])
                mask[start:end] = [True] * (end - start)
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]
    return ids[:-1], labels[1:]


def assert_theirs(sample: dict, theirs: tuple[list[int], list[int]]) -> None:
    inputs, labels = theirs
    assert sample["input_ids"].tolist()[:-1] == inputs
    assert shift_labels(sample["labels"]).tolist() == [*labels, IGNORE_INDEX]


def labeled_text(tok, sample: dict) -> str:
    return tok.decode([t for t in sample["labels"].tolist() if t != IGNORE_INDEX])


def test_squad_without_chat_template(rows, plain) -> None:
    """Their prompt and the stripped answer as one text, no EOS; the unlabeled count is the
    prompt tokenized alone, so with add_bos_token the joined first answer token is unlabeled."""
    dataset = squad_dataset(plain, rows("squad.jsonl", SQUAD), prompt_format="nemo_automodel")
    for sample, row in zip(dataset, SQUAD, strict=True):
        answer = row["answers"]["text"][0].strip()
        assert_theirs(sample, their_text(plain, squad_prompt(row), answer))
        ids = sample["input_ids"].tolist()
        assert ids[0] == plain.bos_token_id and plain.eos_token_id not in ids
    expected = " capital" if plain.add_bos_token else " the capital"
    assert labeled_text(plain, dataset[0]) == expected


def test_squad_with_the_tokenizers_chat_template(rows, tokenizer) -> None:
    """A user and an assistant turn; the loss from the end of the user turn's tokens, so the
    assistant header too (our chat_dataset labels the answer after it)."""
    dataset = squad_dataset(tokenizer, rows("squad.jsonl", SQUAD), prompt_format="nemo_automodel")
    for sample, row in zip(dataset, SQUAD, strict=True):
        messages = squad_turns(row, row["answers"]["text"][0].strip())
        assert_theirs(sample, their_chat(tokenizer, messages, tokenizer.chat_template))
    assert labeled_text(tokenizer, dataset[1]) == "<|assistant|>\nblue<|end|>\n"


def test_squad_chat_template_argument_replaces_the_tokenizers(
    rows, plain, tokenizer, tmp_path
) -> None:
    """Their chat_template: a template, or a file holding one, used as the tokenizer's."""
    template = marked(tokenizer.chat_template)
    path = rows("squad.jsonl", SQUAD)
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": template}))
    given = squad_dataset(plain, path, prompt_format="nemo_automodel", chat_template=template)
    from_file = squad_dataset(
        plain, path, prompt_format="nemo_automodel", chat_template=str(config)
    )
    assert_theirs(given[0], their_chat(plain, squad_turns(SQUAD[0], "the capital"), template))
    assert labeled_text(plain, given[0]) == "the capital<|end|>\n"
    assert from_file[0]["labels"].tolist() == given[0]["labels"].tolist()
    with pytest.raises(
        DataError, match="chat_template applies with prompt_format='nemo_automodel'"
    ):
        squad_dataset(plain, path, chat_template=template)
    with pytest.raises(DataError, match="prompt_format must be one of automodel, nemo_automodel"):
        squad_dataset(plain, path, prompt_format="nemo")


def test_hellaswag_context_and_ending_tokenized_apart(rows, tokenizer) -> None:
    data = [
        {
            "ctx": "The quick brown fox",
            "endings": ["sleeps.", "jumps over the lazy dog."],
            "label": "1",
        },
        {"ctx": "Once upon a time", "endings": ["there was a small model."], "label": 0},
    ]
    dataset = hellaswag_dataset(tokenizer, rows("hs.jsonl", data), prompt_format="nemo_automodel")
    special = set(tokenizer.all_special_ids)
    for sample, row in zip(dataset, data, strict=True):
        c = tokenizer(row["ctx"])["input_ids"]
        t = tokenizer(row["endings"][int(row["label"])])["input_ids"]
        c = c[:-1] if c[-1] in special else c
        t = t[1:] if t[0] in special else t
        # SFTSingleTurnPreprocessor: unshifted inputs, labels already shifted
        assert sample["input_ids"].tolist() == c + t
        expected = [IGNORE_INDEX] * (len(c) - 1) + t + [IGNORE_INDEX]
        assert shift_labels(sample["labels"]).tolist() == expected
    assert labeled_text(tokenizer, dataset[0]) == "jumps over the lazy dog."


def test_column_mapped_rows(rows, plain, tokenizer) -> None:
    data = [
        {"ctx": "Arithmetic.", "q": "What is two plus two?", "a": "four"},
        {"ctx": None, "q": "Say hello.", "a": "hello"},
    ]
    path = rows("inst.jsonl", data)
    full = {"context": "ctx", "question": "q", "answer": "a"}
    dataset = instruction_dataset(plain, path, column_mapping=full, prompt_format="nemo_automodel")
    assert_theirs(dataset[0], their_text(plain, "Arithmetic. What is two plus two? ", "four"))
    assert_theirs(dataset[1], their_text(plain, "Say hello. ", "hello"))
    context_only = {"context": "ctx", "answer": "a"}
    everything = instruction_dataset(
        plain,
        path,
        column_mapping=context_only,
        prompt_format="nemo_automodel",
        answer_only_loss=False,
    )
    assert_theirs(everything[0], their_text(plain, "Arithmetic. ", "four", answer_only=False))

    chat = instruction_dataset(
        tokenizer,
        path,
        column_mapping=full,
        prompt_format="nemo_automodel",
        use_chat_template=True,
    )
    for sample, row in zip(chat, data, strict=True):
        messages = [
            {"role": "system", "content": row["ctx"] or ""},
            {"role": "user", "content": row["q"]},
            {"role": "assistant", "content": row["a"]},
        ]
        assert_theirs(sample, their_chat(tokenizer, messages, tokenizer.chat_template))
    with pytest.raises(DataError, match="use_chat_template applies with prompt_format"):
        instruction_dataset(tokenizer, path, column_mapping=full, use_chat_template=True)
    with pytest.raises(DataError, match="must map 'answer' and 'question', 'context' or both"):
        instruction_dataset(
            plain, path, column_mapping={"answer": "a"}, prompt_format="nemo_automodel"
        )


def test_template_that_rewrites_earlier_turns_is_refused(rows, tokenizer) -> None:
    """Their prefix rule needs each prefix's tokens to start the whole conversation's."""
    rewriting = tokenizer.chat_template.replace(
        "'<|end|>\n'", "('<|end|>\n' if not loop.last else '\n')"
    )
    with pytest.raises(DataError, match="tokens of assistant message 1 cannot be located"):
        squad_dataset(
            tokenizer,
            rows("squad.jsonl", SQUAD),
            prompt_format="nemo_automodel",
            chat_template=rewriting,
        )
