"""Dataset builders for each data format: QA, chat, column-mapped instructions, plain text.

`prompt_format` picks how the QA, completion and instruction builders write and label a row:
`automodel` (ours, the default) or `nemo_automodel` (NeMo AutoModel's tokens, `_nemo_format`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..losses import IGNORE_INDEX
from . import _nemo_format as nemo
from ._building import (
    TEXT_TRUNCATION_MODES,
    Encoded,
    build_dataset,
    check_options,
    eos_id,
    source_of,
)
from ._chat import chat_labels_many
from ._dataset import TokenizedDataset
from ._errors import DataError
from ._loading import load_rows, require_columns

QA_PROMPT = "Context: {context}\nQuestion: {question}\nAnswer:"
QUESTION_PROMPT = "Question: {question}\nAnswer:"
_MAPPABLE = ("context", "question", "answer")


def squad_dataset(
    tokenizer: Any,
    path: str | Path = "rajpurkar/squad",
    split: str = "train",
    *,
    seq_length: int | None = None,
    truncation: str = "truncate",
    prompt_format: str = "automodel",
    chat_template: str | None = None,
    name: str | None = None,
    cache_dir: str | None = None,
    shuffle_seed: int | None = None,
) -> TokenizedDataset:
    """SQuAD-style QA (`context`, `question`, `answers`): loss on the answer tokens and EOS only.

    `prompt_format="nemo_automodel"`: NeMo AutoModel's tokens, `Context: {c} Question: {q}
    Answer: {answer}` as one text (no EOS added), or as a user and an assistant turn when the
    tokenizer has a chat template or `chat_template` (which replaces it) is given.
    """
    check_options(seq_length, truncation)
    source = source_of("squad_dataset", path, split)
    asked = ["chat_template"] if chat_template is not None else []
    their = nemo.check_prompt_format(prompt_format, source, asked)
    template = nemo.their_chat_template(tokenizer, chat_template) if their else None
    rows = load_rows(path, split, name=name, cache_dir=cache_dir, shuffle_seed=shuffle_seed)
    require_columns(rows, ["context", "question", "answers"], source)

    def encode(batch: Mapping[str, list]) -> list[Encoded]:
        contexts, questions = batch["context"], batch["question"]
        answers = [_answer_text(a) for a in batch["answers"]]
        if their:
            return nemo.encode_squad(tokenizer, contexts, questions, answers, template)
        prompts = [
            QA_PROMPT.format(context=c, question=q)
            for c, q in zip(contexts, questions, strict=True)
        ]
        return _encode_prompt_answer(tokenizer, prompts, answers)

    return build_dataset(rows, encode, tokenizer, seq_length, truncation, source)


def hellaswag_dataset(
    tokenizer: Any,
    path: str | Path = "rowan/hellaswag",
    split: str = "train",
    *,
    seq_length: int | None = None,
    truncation: str = "truncate",
    prompt_format: str = "automodel",
    name: str | None = None,
    cache_dir: str | None = None,
    shuffle_seed: int | None = None,
) -> TokenizedDataset:
    """HellaSwag-style completion (`ctx`, `endings`, `label`): the context as the prompt, loss on
    the correct ending (`endings[label]`) and EOS only.

    `prompt_format="nemo_automodel"`: NeMo AutoModel's tokens, context and ending tokenized
    apart and joined (no space between them, no EOS added); loss on the ending.
    """
    check_options(seq_length, truncation)
    source = source_of("hellaswag_dataset", path, split)
    their = nemo.check_prompt_format(prompt_format, source)
    rows = load_rows(path, split, name=name, cache_dir=cache_dir, shuffle_seed=shuffle_seed)
    require_columns(rows, ["ctx", "endings", "label"], source)

    def encode(batch: Mapping[str, list]) -> list[Encoded]:
        answers = []
        for index, (endings, label) in enumerate(
            zip(batch["endings"], batch["label"], strict=True)
        ):
            try:
                answers.append(None if label in (None, "") else endings[int(label)])
            except (IndexError, TypeError, ValueError):
                raise DataError(
                    f"{source}: sample {index}: label {label!r} does not index its "
                    f"{len(endings) if isinstance(endings, list) else 0} endings"
                ) from None
        contexts = [str(c) for c in batch["ctx"]]
        if their:
            return nemo.context_target(tokenizer, contexts, answers)
        return _encode_prompt_answer(tokenizer, contexts, answers)

    return build_dataset(rows, encode, tokenizer, seq_length, truncation, source)


def instruction_dataset(
    tokenizer: Any,
    path: str | Path,
    split: str = "train",
    *,
    column_mapping: Mapping[str, str] | None = None,
    seq_length: int | None = None,
    truncation: str = "truncate",
    prompt_format: str = "automodel",
    use_chat_template: bool = False,
    answer_only_loss: bool = True,
    name: str | None = None,
    cache_dir: str | None = None,
    shuffle_seed: int | None = None,
) -> TokenizedDataset:
    """Instruction data with columns mapped to `question`, `answer` and optional `context`; loss on the answer.

    `prompt_format="nemo_automodel"`: NeMo AutoModel's tokens, `{context} {question} {answer}`
    as one text (no EOS added; `context` or `question` may be unmapped), or with
    `use_chat_template` (and a tokenizer that has one) system, user and assistant turns;
    `answer_only_loss=False` takes the loss on every token.
    """
    check_options(seq_length, truncation)
    source = source_of("instruction_dataset", path, split)
    asked = {"use_chat_template": use_chat_template, "answer_only_loss": not answer_only_loss}
    their = nemo.check_prompt_format(prompt_format, source, [k for k, v in asked.items() if v])
    mapping = _column_mapping(column_mapping, their)
    template = nemo.their_chat_template(tokenizer) if their and use_chat_template else None
    rows = load_rows(path, split, name=name, cache_dir=cache_dir, shuffle_seed=shuffle_seed)
    require_columns(rows, [mapping[k] for k in _MAPPABLE if k in mapping], source)

    def encode(batch: Mapping[str, list]) -> list[Encoded]:
        answers = batch[mapping["answer"]]
        absent = [None] * len(answers)
        contexts = batch[mapping["context"]] if "context" in mapping else absent
        questions = batch[mapping["question"]] if "question" in mapping else absent
        if their:
            return nemo.encode_instructions(
                tokenizer, contexts, questions, answers, template, answer_only=answer_only_loss
            )
        prompts = [
            QA_PROMPT.format(context=c, question=q) if c else QUESTION_PROMPT.format(question=q)
            for c, q in zip(contexts, questions, strict=True)
        ]
        return _encode_prompt_answer(tokenizer, prompts, answers)

    return build_dataset(rows, encode, tokenizer, seq_length, truncation, source)


def chat_dataset(
    tokenizer: Any,
    path: str | Path,
    split: str = "train",
    *,
    seq_length: int | None = None,
    truncation: str = "truncate",
    messages_column: str = "messages",
    chat_template: str | None = None,
    name: str | None = None,
    cache_dir: str | None = None,
    shuffle_seed: int | None = None,
) -> TokenizedDataset:
    """Conversations in OpenAI format rendered with the chat template; loss on assistant turns only."""
    check_options(seq_length, truncation)
    rows = load_rows(path, split, name=name, cache_dir=cache_dir, shuffle_seed=shuffle_seed)
    source = source_of("chat_dataset", path, split)
    require_columns(rows, [messages_column], source)
    counter = iter(range(len(rows)))

    def encode(batch: Mapping[str, list]) -> list[Encoded]:
        learnable = []  # conversations with an assistant turn; the others give None
        for messages in batch[messages_column]:
            _check_messages(messages, next(counter), source)
            learnable.append(any(m["role"] == "assistant" for m in messages))
        conversations = [
            m for m, keep in zip(batch[messages_column], learnable, strict=True) if keep
        ]
        encoded = iter(chat_labels_many(tokenizer, conversations, chat_template=chat_template))
        return [next(encoded) if keep else None for keep in learnable]

    return build_dataset(rows, encode, tokenizer, seq_length, truncation, source)


def text_dataset(
    tokenizer: Any,
    path: str | Path,
    split: str = "train",
    *,
    text_column: str = "text",
    seq_length: int | None = None,
    truncation: str = "truncate",
    name: str | None = None,
    cache_dir: str | None = None,
    shuffle_seed: int | None = None,
) -> TokenizedDataset:
    """Plain text for pre-training, one document per row (BOS per tokenizer, EOS appended); loss on all tokens.

    For pre-training use `truncation="chunk"`: a document longer than `seq_length` becomes
    consecutive samples of `seq_length` tokens (the last one shorter), so no token is thrown
    away. The default `"truncate"` keeps only the first `seq_length` tokens of each document;
    `"drop"` and `"error"` skip or reject long documents.
    """
    check_options(seq_length, truncation, TEXT_TRUNCATION_MODES)
    rows = load_rows(path, split, name=name, cache_dir=cache_dir, shuffle_seed=shuffle_seed)
    source = source_of("text_dataset", path, split)
    require_columns(rows, [text_column], source)
    eos = eos_id(tokenizer)

    def encode(batch: Mapping[str, list]) -> list[Encoded]:
        texts = batch[text_column]
        ids = tokenizer([t or "" for t in texts], add_special_tokens=True)["input_ids"]
        return [([*i, eos], [*i, eos]) if t else None for t, i in zip(texts, ids, strict=True)]

    return build_dataset(rows, encode, tokenizer, seq_length, truncation, source)


def _column_mapping(column_mapping: Mapping[str, str] | None, their: bool) -> dict[str, str]:
    """The mapping of `context` / `question` / `answer` to columns; theirs needs only `answer`
    and one of the others."""
    mapping = dict(column_mapping or {"question": "question", "answer": "answer"})
    keys = set(mapping)
    if their:
        ok = "answer" in keys and len(keys) > 1
        wanted = "'answer' and 'question', 'context' or both"
    else:
        ok, wanted = {"question", "answer"} <= keys, "'question' and 'answer' (and optionally 'context')"  # fmt: skip
    if not ok or keys - set(_MAPPABLE):
        raise DataError(
            f"instruction_dataset: column_mapping must map {wanted} to column names; "
            f"got keys {sorted(mapping)}"
        )
    return mapping


def _answer_text(value: Any) -> str | None:
    """The first answer of a SQuAD `answers` field ({text: [...]}), a list, or a plain string."""
    if isinstance(value, Mapping):
        value = value.get("text")
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return None if value is None else str(value)


def _encode_prompt_answer(
    tokenizer: Any, prompts: list[str], answers: Iterable[Any]
) -> list[Encoded]:
    """Prompt tokens (with the tokenizer's BOS) unlabeled, then answer tokens and EOS labeled."""
    eos = eos_id(tokenizer)
    answers = [None if a is None else str(a) for a in answers]
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer([" " + (a or "") for a in answers], add_special_tokens=False)[
        "input_ids"
    ]
    out: list[Encoded] = []
    for answer, p, a in zip(answers, prompt_ids, answer_ids, strict=True):
        if answer is None:
            out.append(None)
            continue
        p = list(p[:-1] if p and p[-1] == eos else p)
        target = [*a, eos]
        out.append((p + target, [IGNORE_INDEX] * len(p) + target))
    return out


def _check_messages(messages: Any, index: int, source: str) -> None:
    ok = isinstance(messages, list) and all(
        isinstance(m, Mapping) and "role" in m and "content" in m for m in messages
    )
    if not ok:
        raise DataError(
            f"{source}: sample {index}: expected a list of messages like "
            f'{{"role": "user", "content": "..."}}; got {str(messages)[:200]}'
        )
