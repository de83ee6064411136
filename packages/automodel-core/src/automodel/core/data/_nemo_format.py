"""NeMo AutoModel's encodings of prompt/answer rows (`prompt_format="nemo_automodel"`).

The rules of their `formatting_utils.py` (`format_prompt_completion`, `format_chat_template`)
and of the `SFTSingleTurnPreprocessor` their HellaSwag uses, so that a translated config trains
on the same tokens. Their samples are shifted when made (inputs `ids[:-1]`, labels `ids[1:]`);
ours are not (the loss shifts them): the same ids and targets, and `labels[0]` is never one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..losses import IGNORE_INDEX
from ._building import Encoded
from ._chat import _labels_from_generation_mask
from ._errors import DataError

PROMPT_FORMATS = ("automodel", "nemo_automodel")
NEMO_QA_PROMPT = "Context: {context} Question: {question} Answer: "
# their test for a template that marks assistant text itself (stricter than jinja's syntax)
_GENERATION = re.compile(r"\{%-?\s+generation\s+-?%\}")

Conversation = list[dict[str, Any]]


def check_prompt_format(prompt_format: str, builder: str, nemo_only: Iterable[str] = ()) -> bool:
    """True for NeMo AutoModel's format; a DataError for an unknown one, or for options of
    theirs (`nemo_only`: the names the user set) asked of ours."""
    if prompt_format not in PROMPT_FORMATS:
        raise DataError(
            f"{builder}: prompt_format must be one of {', '.join(PROMPT_FORMATS)}; "
            f"got {prompt_format!r}"
        )
    nemo = prompt_format == "nemo_automodel"
    asked = list(nemo_only)
    if asked and not nemo:
        raise DataError(
            f"{builder}: {asked[0]} applies with prompt_format='nemo_automodel' only; drop it, "
            "or use chat_dataset for conversations rendered with a chat template"
        )
    return nemo


def their_chat_template(tokenizer: Any, override: str | None = None) -> str | None:
    """The template they render with: `override` (a template, or a file holding one: its text,
    or the `chat_template` of a JSON file) in place of the tokenizer's; None without one."""
    if override is not None:
        if "{%" in override or "{{" in override or not Path(override).exists():
            return override
        text = Path(override).read_text(encoding="utf-8")
        try:
            return json.loads(text)["chat_template"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return text
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):  # several named templates: their default, else the first
        template = template.get("default", next(iter(template.values()), None))
    return template


def encode_squad(
    tokenizer: Any,
    contexts: list[Any],
    questions: list[Any],
    answers: list[str | None],
    template: str | None,
) -> list[Encoded]:
    """Their SQuAD rows (`make_squad_dataset`): the stripped answer after their prompt, as one
    text, or as the assistant turn after the prompt as the user's with a chat template."""
    answers = [None if a is None else a.strip() for a in answers]
    parts = list(zip(contexts, questions, strict=True))
    if template is None:
        prompts = [NEMO_QA_PROMPT.format(context=c, question=q) for c, q in parts]
        return prompt_completion(tokenizer, prompts, answers)
    prompts = [NEMO_QA_PROMPT.format(context=c or "", question=q or "") for c, q in parts]
    turns = [
        None if a is None else [_turn("user", p), _turn("assistant", a)]
        for p, a in zip(prompts, answers, strict=True)
    ]
    return chat(tokenizer, turns, template)


def encode_instructions(
    tokenizer: Any,
    contexts: list[Any],
    questions: list[Any],
    answers: list[Any],
    template: str | None,
    *,
    answer_only: bool = True,
) -> list[Encoded]:
    """Their column-mapped rows (`ColumnMappedTextInstructionDataset`): `{context} {question} `
    (the parts present) then the answer, as one text; with a chat template, system (context),
    user (question) and assistant (answer) turns."""
    answers = [None if a is None else str(a) for a in answers]
    parts = list(zip(contexts, questions, strict=True))
    if template is None:
        prompts = [" ".join(str(x) for x in (c, q, "") if x is not None) for c, q in parts]
        return prompt_completion(tokenizer, prompts, answers, answer_only=answer_only)
    turns = [
        None
        if a is None
        else [_turn("system", c or ""), _turn("user", q or ""), _turn("assistant", a)]
        for (c, q), a in zip(parts, answers, strict=True)
    ]
    return chat(tokenizer, turns, template, answer_only=answer_only)


def prompt_completion(
    tokenizer: Any,
    prompts: list[str],
    answers: list[str | None],
    *,
    answer_only: bool = True,
) -> list[Encoded]:
    """`prompt + answer` tokenized as one text (with the tokenizer's special tokens, no EOS
    added); no loss on its first N tokens, N the prompt's tokens alone plus one when
    `tokenizer.add_bos_token` (0 with `answer_only=False`). A None answer gives None."""
    kept = [i for i, answer in enumerate(answers) if answer is not None]
    out: list[Encoded] = [None] * len(answers)
    if not kept:
        return out
    ids = tokenizer([prompts[i] + str(answers[i]) for i in kept])["input_ids"]
    unlabeled = [0] * len(kept)
    if answer_only:
        bos = 1 if getattr(tokenizer, "add_bos_token", False) else 0
        alone = tokenizer([prompts[i] for i in kept], add_special_tokens=False)["input_ids"]
        unlabeled = [bos + len(p) for p in alone]
    for i, full, n in zip(kept, ids, unlabeled, strict=True):
        full = list(full)
        out[i] = _labeled(full, [j >= n for j in range(len(full))])
    return out


def chat(
    tokenizer: Any,
    conversations: list[Conversation | None],
    template: str,
    *,
    answer_only: bool = True,
    tools: list[Any] | None = None,
) -> list[Encoded]:
    """Rendered and tokenized with `template`; loss on the tokenizer's assistant mask when the
    template has {% generation %} markers, else on each assistant turn's tokens: from the end
    of the tokenized messages before it (its header included) to the end of those through it
    (every token with `answer_only=False`). A None conversation gives None. `tools`: each
    conversation's tool definitions (or None), rendered by the template."""
    tools = tools if tools is not None else [None] * len(conversations)
    kept = [(c, t) for c, t in zip(conversations, tools, strict=True) if c is not None]
    if _GENERATION.search(template):
        if any(t for _, t in kept):
            marked = [
                _labels_from_generation_mask(tokenizer, [c], template, tools=t)[0] for c, t in kept
            ]
        else:  # one call for all, which is faster
            marked = _labels_from_generation_mask(tokenizer, [c for c, _ in kept], template)
        encoded = iter(_labeled(ids, [t != IGNORE_INDEX for t in labels]) for ids, labels in marked)
    else:
        encoded = iter(_turns(tokenizer, c, template, answer_only, t) for c, t in kept)
    return [None if c is None else next(encoded) for c in conversations]


def context_target(tokenizer: Any, contexts: list[str], targets: list[str | None]) -> list[Encoded]:
    """Context and target tokenized apart, each with the tokenizer's special tokens, less a
    special token ending the context or starting the target; loss on the target's tokens."""
    special = set(tokenizer.all_special_ids)
    kept = [i for i, target in enumerate(targets) if target is not None]
    out: list[Encoded] = [None] * len(targets)
    if not kept:
        return out
    context_ids = tokenizer([contexts[i] for i in kept])["input_ids"]
    target_ids = tokenizer([str(targets[i]) for i in kept])["input_ids"]
    for i, c, t in zip(kept, context_ids, target_ids, strict=True):
        c, t = list(c), list(t)
        c = c[:-1] if c and c[-1] in special else c
        t = t[1:] if t and t[0] in special else t
        out[i] = _labeled(c + t, [False] * len(c) + [True] * len(t))
    return out


def _turns(
    tokenizer: Any, messages: Conversation, template: str, answer_only: bool, tools: Any = None
) -> Encoded:
    ids = chat_ids(tokenizer, messages, template, tools)
    if not answer_only:
        return _labeled(ids, [True] * len(ids))
    lengths = {len(messages): len(ids)}
    eos = getattr(tokenizer, "eos_token_id", None)

    def length(k: int, turn: int) -> int:  # tokens of messages[:k], a prefix of the whole
        if k not in lengths:
            prefix = chat_ids(tokenizer, messages[:k], template, tools)
            n = len(prefix)
            ends_in_eos = n > 1 and prefix[-1] == eos and prefix[:-1] == ids[: n - 1]
            if prefix != ids[:n] and not ends_in_eos:
                raise DataError(
                    f"the chat template renders the first {k} messages differently when more "
                    f"follow, so the tokens of assistant message {turn} cannot be located; use "
                    "a template with {% generation %} markers (chat_template=...)"
                )
            lengths[k] = n
        return lengths[k]

    target = [False] * len(ids)
    for turn, message in enumerate(messages):
        if message.get("role") == "assistant":
            for position in range(length(turn, turn), min(length(turn + 1, turn), len(ids))):
                target[position] = True
    return _labeled(ids, target)


def _turn(role: str, content: Any) -> dict[str, Any]:
    return {"role": role, "content": content}


def chat_ids(tokenizer: Any, messages: Conversation, template: str, tools: Any = None) -> list[int]:
    """The token ids of `messages` rendered with `template` (and `tools`), as they tokenize it."""
    encoding = tokenizer.apply_chat_template(
        messages, chat_template=template, tools=tools, tokenize=True, return_dict=True
    )
    return list(encoding["input_ids"])


def _labeled(ids: list[int], target: list[bool]) -> Encoded:
    """(ids, labels): each target position's id (never position 0), else IGNORE_INDEX; None
    when no position is left to learn from."""
    labels = [
        t if keep and j > 0 else IGNORE_INDEX
        for j, (t, keep) in enumerate(zip(ids, target, strict=True))
    ]
    return (ids, labels) if any(label != IGNORE_INDEX for label in labels) else None
