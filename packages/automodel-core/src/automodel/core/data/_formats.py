"""Dataset builders for each data format: QA, chat, column-mapped instructions, plain text."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..losses import IGNORE_INDEX
from ._chat import chat_labels_many
from ._dataset import SampleBuffer, TokenizedDataset
from ._errors import DataError
from ._loading import load_rows, require_columns

logger = logging.getLogger(__name__)

TRUNCATION_MODES = ("truncate", "drop", "error")
# Plain text may also be split: a document is a stream of tokens, not a prompt and its answer.
TEXT_TRUNCATION_MODES = (*TRUNCATION_MODES, "chunk")
QA_PROMPT = "Context: {context}\nQuestion: {question}\nAnswer:"
QUESTION_PROMPT = "Question: {question}\nAnswer:"
_MAPPABLE = ("context", "question", "answer")

# One encoded sample (input_ids, labels), or None for a sample with nothing to learn from.
Encoded = tuple[list[int], list[int]] | None


def squad_dataset(
    tokenizer: Any,
    path: str | Path = "rajpurkar/squad",
    split: str = "train",
    *,
    seq_length: int | None = None,
    truncation: str = "truncate",
    name: str | None = None,
    cache_dir: str | None = None,
    shuffle_seed: int | None = None,
) -> TokenizedDataset:
    """SQuAD-style QA (`context`, `question`, `answers`): loss on the answer tokens and EOS only."""
    _check_options(seq_length, truncation)
    rows = load_rows(path, split, name=name, cache_dir=cache_dir, shuffle_seed=shuffle_seed)
    source = _source("squad_dataset", path, split)
    require_columns(rows, ["context", "question", "answers"], source)

    def encode(batch: Mapping[str, list]) -> list[Encoded]:
        prompts = [
            QA_PROMPT.format(context=c, question=q)
            for c, q in zip(batch["context"], batch["question"], strict=True)
        ]
        return _encode_prompt_answer(
            tokenizer, prompts, [_answer_text(a) for a in batch["answers"]]
        )

    return _build(rows, encode, tokenizer, seq_length, truncation, source)


def hellaswag_dataset(
    tokenizer: Any,
    path: str | Path = "rowan/hellaswag",
    split: str = "train",
    *,
    seq_length: int | None = None,
    truncation: str = "truncate",
    name: str | None = None,
    cache_dir: str | None = None,
    shuffle_seed: int | None = None,
) -> TokenizedDataset:
    """HellaSwag-style completion (`ctx`, `endings`, `label`): the context as the prompt, loss on
    the correct ending (`endings[label]`) and EOS only."""
    _check_options(seq_length, truncation)
    rows = load_rows(path, split, name=name, cache_dir=cache_dir, shuffle_seed=shuffle_seed)
    source = _source("hellaswag_dataset", path, split)
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
        return _encode_prompt_answer(tokenizer, [str(c) for c in batch["ctx"]], answers)

    return _build(rows, encode, tokenizer, seq_length, truncation, source)


def instruction_dataset(
    tokenizer: Any,
    path: str | Path,
    split: str = "train",
    *,
    column_mapping: Mapping[str, str] | None = None,
    seq_length: int | None = None,
    truncation: str = "truncate",
    name: str | None = None,
    cache_dir: str | None = None,
    shuffle_seed: int | None = None,
) -> TokenizedDataset:
    """Instruction data with columns mapped to `question`, `answer` and optional `context`; loss on the answer."""
    _check_options(seq_length, truncation)
    mapping = dict(column_mapping or {"question": "question", "answer": "answer"})
    unknown = sorted(set(mapping) - set(_MAPPABLE))
    if unknown or not {"question", "answer"} <= set(mapping):
        raise DataError(
            f"instruction_dataset: column_mapping must map 'question' and 'answer' (and optionally "
            f"'context') to column names; got keys {sorted(mapping)}"
        )
    rows = load_rows(path, split, name=name, cache_dir=cache_dir, shuffle_seed=shuffle_seed)
    source = _source("instruction_dataset", path, split)
    require_columns(rows, [mapping[k] for k in _MAPPABLE if k in mapping], source)

    def encode(batch: Mapping[str, list]) -> list[Encoded]:
        questions = batch[mapping["question"]]
        if "context" in mapping:
            prompts = [
                QA_PROMPT.format(context=c, question=q) if c else QUESTION_PROMPT.format(question=q)
                for c, q in zip(batch[mapping["context"]], questions, strict=True)
            ]
        else:
            prompts = [QUESTION_PROMPT.format(question=q) for q in questions]
        return _encode_prompt_answer(tokenizer, prompts, batch[mapping["answer"]])

    return _build(rows, encode, tokenizer, seq_length, truncation, source)


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
    _check_options(seq_length, truncation)
    rows = load_rows(path, split, name=name, cache_dir=cache_dir, shuffle_seed=shuffle_seed)
    source = _source("chat_dataset", path, split)
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

    return _build(rows, encode, tokenizer, seq_length, truncation, source)


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
    _check_options(seq_length, truncation, TEXT_TRUNCATION_MODES)
    rows = load_rows(path, split, name=name, cache_dir=cache_dir, shuffle_seed=shuffle_seed)
    source = _source("text_dataset", path, split)
    require_columns(rows, [text_column], source)
    eos = _eos_id(tokenizer)

    def encode(batch: Mapping[str, list]) -> list[Encoded]:
        texts = batch[text_column]
        ids = tokenizer([t or "" for t in texts], add_special_tokens=True)["input_ids"]
        return [([*i, eos], [*i, eos]) if t else None for t, i in zip(texts, ids, strict=True)]

    return _build(rows, encode, tokenizer, seq_length, truncation, source)


def _check_options(
    seq_length: int | None, truncation: str, modes: tuple[str, ...] = TRUNCATION_MODES
) -> None:
    if truncation not in modes:
        only_text = " (chunk splits plain text only: text_dataset)" if truncation == "chunk" else ""
        raise DataError(
            f"truncation must be one of {', '.join(modes)}; got {truncation!r}{only_text}"
        )
    if seq_length is not None and (not isinstance(seq_length, int) or seq_length < 1):
        raise DataError(f"seq_length must be a positive integer; got {seq_length!r}")


def _source(builder: str, path: str | Path, split: str) -> str:
    return f"{builder}({path}, split={split})"


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError("the tokenizer has no EOS token (eos_token_id is None)")
    return int(eos)


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
    eos = _eos_id(tokenizer)
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


def _build(
    rows: Any,
    encode: Callable[[Mapping[str, list]], list[Encoded]],
    tokenizer: Any,
    seq_length: int | None,
    truncation: str,
    source: str,
) -> TokenizedDataset:
    """Encode all rows, apply the truncation policy, count and log what was changed."""
    buffer = SampleBuffer()
    index = truncated = too_long = no_target = chunked = chunks = 0
    for batch in rows.iter(batch_size=256):
        for encoded in encode(batch):
            if encoded is None:
                no_target += 1
                index += 1
                continue
            input_ids, labels = encoded
            if seq_length is not None and len(input_ids) > seq_length:
                if truncation == "error":
                    raise DataError(
                        f"{source}: sample {index} has {len(input_ids)} tokens, more than "
                        f"seq_length={seq_length} (set truncation to 'truncate' or 'drop', "
                        "'chunk' for plain text, or raise seq_length)"
                    )
                if truncation == "drop":
                    too_long += 1
                    index += 1
                    continue
                if truncation == "chunk":
                    chunked += 1
                    for start in range(0, len(input_ids), seq_length):
                        end = start + seq_length
                        buffer.add(input_ids=input_ids[start:end], labels=labels[start:end])
                        chunks += 1
                    index += 1
                    continue
                truncated += 1
                input_ids, labels = input_ids[:seq_length], labels[:seq_length]
                if all(label == IGNORE_INDEX for label in labels):
                    no_target += 1
                    index += 1
                    continue
            buffer.add(input_ids=input_ids, labels=labels)
            index += 1
    dropped = too_long + no_target
    if chunked:
        logger.info(
            "%s: %d of %d samples longer than seq_length=%s split into %d chunks",
            source,
            chunked,
            index,
            seq_length,
            chunks,
        )
    if truncated or dropped:
        logger.warning(
            "%s: %d of %d samples truncated to seq_length=%s, %d dropped as longer than "
            "seq_length, %d dropped with no tokens to learn from",
            source,
            truncated,
            index,
            seq_length,
            too_long,
            no_target,
        )
    if len(buffer) == 0:
        raise DataError(
            f"{source}: no samples left out of {index} ({too_long} longer than "
            f"seq_length={seq_length} dropped, {no_target} with no tokens to learn from)"
        )
    columns, offsets = buffer.tensors()
    pad = getattr(tokenizer, "pad_token_id", None)
    dataset = TokenizedDataset(
        columns,
        offsets,
        pad_token_id=int(pad if pad is not None else _eos_id(tokenizer)),
        num_truncated=truncated,
        num_dropped=dropped,
        num_chunked=chunked,
    )
    logger.info("%s: %d samples, %d tokens", source, len(dataset), dataset.num_tokens)
    return dataset
