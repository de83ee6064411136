"""Token labels for chat conversations: loss on the assistant turns only."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..losses import IGNORE_INDEX
from ._errors import DataError

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def chat_labels(
    tokenizer: Any, messages: list[dict[str, Any]], *, chat_template: str | None = None
) -> tuple[list[int], list[int]]:
    """Tokenize a conversation with the chat template; labels are the tokens of assistant turns."""
    return chat_labels_many(tokenizer, [messages], chat_template=chat_template)[0]


def chat_labels_many(
    tokenizer: Any,
    conversations: list[list[dict[str, Any]]],
    *,
    chat_template: str | None = None,
    tools: list[list[dict[str, Any]] | None] | None = None,
) -> list[tuple[list[int], list[int]]]:
    """`chat_labels` of each conversation; a template with {% generation %} markers renders and
    tokenizes them all in one call, which is faster than one call each.

    `tools`: each conversation's tool definitions (OpenAI function schemas, or None), which the
    template renders into the prompt.
    """
    template = chat_template_of(tokenizer, chat_template, "tokenizer")
    tools = tools if tools is not None else [None] * len(conversations)
    if isinstance(template, str) and _GENERATION_TAG.search(template):
        if not any(tools):
            return _labels_from_generation_mask(tokenizer, conversations, template)
        return [
            _labels_from_generation_mask(tokenizer, [messages], template, tools=t)[0]
            for messages, t in zip(conversations, tools, strict=True)
        ]
    return [
        _labels_from_prefixes(tokenizer, messages, template, t)
        for messages, t in zip(conversations, tools, strict=True)
    ]


def chat_template_of(owner: Any, chat_template: str | None, kind: str) -> str:
    """`chat_template`, else the tokenizer's or processor's own; a DataError when neither."""
    template = chat_template or getattr(owner, "chat_template", None)
    if not template:
        raise DataError(
            f"the {kind} has no chat template; use a chat/instruct model's {kind} "
            "or pass chat_template"
        )
    return template


def _render(
    tokenizer: Any, messages: list, template: str, *, generation_prompt: bool, tools: Any = None
) -> str:
    return tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tools=tools,
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )


def assistant_char_spans(
    render: Callable[[list, bool], str], messages: list[dict[str, Any]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn in it.

    `render(messages, generation_prompt)` is the chat template. The text before assistant turn
    i is the rendering of messages[:i] with the generation prompt; the turn ends where the
    rendering of messages[:i+1] ends. Both must be prefixes of the whole rendering, which holds
    for templates that render each turn independently of later ones.
    """
    full = render(messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = _text_before(render, messages, i, full)
        through = render(messages[: i + 1], False)
        if not (full.startswith(through) and through.startswith(before)):
            raise DataError(
                f"the chat template renders assistant message {i} differently depending on the "
                "messages after it, so its tokens cannot be located; use a template with "
                "{% generation %} markers (chat_template=...)"
            )
        spans.append((len(before), len(through)))
    return full, spans


def labels_in_spans(
    input_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    """Each token's id where its characters overlap a span, else IGNORE_INDEX."""
    labels = [IGNORE_INDEX] * len(input_ids)
    for j, (start, end) in enumerate(offsets):
        if end > start and any(start < s_end and end > s_start for s_start, s_end in spans):
            labels[j] = input_ids[j]
    return labels


def _labels_from_prefixes(
    tokenizer: Any, messages: list[dict[str, Any]], template: str, tools: Any = None
) -> tuple[list[int], list[int]]:
    """Find each assistant turn's characters (`assistant_char_spans`), then map them to tokens."""

    def render(conversation: list, generation_prompt: bool) -> str:
        return _render(
            tokenizer, conversation, template, generation_prompt=generation_prompt, tools=tools
        )

    full, spans = assistant_char_spans(render, messages)
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    return input_ids, labels_in_spans(input_ids, encoding["offset_mapping"], spans)


def _text_before(render: Callable[[list, bool], str], messages: list, i: int, full: str) -> str:
    """The rendering that precedes assistant message i (history plus generation prompt)."""
    if i > 0:
        return render(messages[:i], True)
    try:  # some templates cannot render an empty conversation
        return render([], True)
    except Exception:
        content = messages[0].get("content")
        index = full.find(content) if isinstance(content, str) and content else -1
        return full[:index] if index >= 0 else ""


def _labels_from_generation_mask(
    tokenizer: Any, conversations: list[list[dict[str, Any]]], template: str, tools: Any = None
) -> list[tuple[list[int], list[int]]]:
    """Use the template's {% generation %} markers (`return_assistant_tokens_mask`); `tools`
    are the same for every conversation."""
    if not conversations:
        return []
    encoding = tokenizer.apply_chat_template(
        conversations,
        chat_template=template,
        tools=tools,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    out = []
    for ids, mask in zip(encoding["input_ids"], encoding["assistant_masks"], strict=True):
        input_ids = list(ids)
        labels = [t if m else IGNORE_INDEX for t, m in zip(input_ids, mask, strict=True)]
        out.append((input_ids, labels))
    return out
