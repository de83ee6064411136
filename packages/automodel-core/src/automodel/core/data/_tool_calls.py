"""Function-calling conversations: agent traces and xLAM rows as OpenAI messages with tools.

Row layouts read (`schema`):

* `messages`: OpenAI chat messages (assistant `tool_calls`, `tool` results), or chatml turns
  with `tool_call` / `tool_response` roles (a JSON call `{name, arguments}` per turn);
* `sharegpt`: `conversations` of `{from, value}` turns (`human`, `gpt`, `function_call`,
  `observation`, ...), as in `llamafactory/glaive_toolcall_en`;
* `xlam`: `query`, `tools` and `answers` (the calls), as in `Salesforce/xlam-function-calling-60k`.

A `tools` column (a list or its JSON text) holds the tool definitions the template renders.
Consecutive tool calls become one assistant turn (joining an assistant text turn just before
them); the results that follow are paired with their call ids in order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._building import Encoded, build_dataset, check_options, source_of
from ._chat import chat_labels_many, chat_template_of
from ._dataset import TokenizedDataset
from ._errors import DataError
from ._loading import load_rows
from ._nemo_format import chat, chat_ids, check_prompt_format, their_chat_template

logger = logging.getLogger(__name__)

SCHEMAS = ("auto", "messages", "sharegpt", "xlam")
_ROLES = ("system", "user", "assistant", "tool_call", "tool_response", "tool")
_RESULTS = ("tool_response", "tool")
_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "function_call": "tool_call",
    "tool_call": "tool_call",
    "observation": "tool_response",
    "tool_response": "tool_response",
    "tool": "tool_response",
}
# xLAM parameter types -> JSON schema types
_XLAM_TYPES = {
    **dict.fromkeys(("str", "string"), "string"),
    **dict.fromkeys(("int", "integer"), "integer"),
    **dict.fromkeys(("float", "double", "number"), "number"),
    **dict.fromkeys(("bool", "boolean"), "boolean"),
    **dict.fromkeys(("list", "array"), "array"),
    "object": "object",
}

Messages = list[dict[str, Any]]


def tool_conversation(
    row: Mapping[str, Any],
    schema: str = "auto",
    *,
    trim_incomplete_last_turn: bool = False,
    drop_history_reasoning_content: bool = False,
) -> tuple[Messages, list[dict[str, Any]] | None]:
    """One row as (OpenAI messages, tool definitions or None); a ValueError names what is wrong.

    `trim_incomplete_last_turn`: drop the turns after the last assistant one.
    `drop_history_reasoning_content`: keep `reasoning_content` on the last assistant turn only.
    """
    schema = _schema_of(row) if schema == "auto" else schema
    if schema == "xlam":
        return _xlam(row)
    if schema == "sharegpt":
        raw = [_from_sharegpt(turn) for turn in _list(row.get("conversations"), "conversations")]
    else:
        raw = _list(row.get("messages"), "messages")
    if trim_incomplete_last_turn:
        last = max((i for i, m in enumerate(raw) if m.get("role") == "assistant"), default=-1)
        raw = raw[: last + 1] if last >= 0 else raw
    messages = _openai_messages(raw, row.get("id"))
    if drop_history_reasoning_content:
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        for i, message in enumerate(messages):
            if i != last:
                message.pop("reasoning_content", None)
    return messages, _tools(row.get("tools"))


def tool_call_dataset(
    tokenizer: Any,
    path: str | Path,
    split: str = "train",
    *,
    schema: str = "auto",
    seq_length: int | None = None,
    truncation: str = "truncate",
    chat_template: str | None = None,
    prompt_format: str = "automodel",
    trim_incomplete_last_turn: bool = False,
    drop_history_reasoning_content: bool = False,
    truncate_history: bool = False,
    name: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    shuffle_seed: int | None = None,
) -> TokenizedDataset:
    """Function-calling conversations rendered with the chat template and their tools; loss on
    the assistant turns (their tool calls included), as `chat_dataset` (or, with
    `prompt_format="nemo_automodel"`, NeMo AutoModel's turn spans).

    `truncate_history`: drop the oldest exchanges (from one user turn to the next; a leading
    system turn stays) until the conversation fits `seq_length`, before `truncation` applies.
    """
    check_options(seq_length, truncation)
    nemo = check_prompt_format(prompt_format, "tool_call_dataset")
    if schema not in SCHEMAS:
        raise DataError(f"tool_call_dataset: schema must be one of {', '.join(SCHEMAS)}; got {schema!r}")  # fmt: skip
    if truncate_history and seq_length is None:
        raise DataError("tool_call_dataset: truncate_history needs seq_length")
    rows = load_rows(
        path, split, name=name, revision=revision, cache_dir=cache_dir, shuffle_seed=shuffle_seed
    )
    source = source_of("tool_call_dataset", path, split)
    template = (
        their_chat_template(tokenizer, chat_template)
        if nemo
        else chat_template_of(tokenizer, chat_template, "tokenizer")
    )
    if not template:
        raise DataError(f"{source}: the tokenizer has no chat template; pass chat_template")
    counter = iter(range(len(rows)))

    def read(row: dict[str, Any]) -> tuple[Messages, Any] | None:
        index = next(counter)
        try:
            messages, tools = tool_conversation(
                row, schema, trim_incomplete_last_turn=trim_incomplete_last_turn,
                drop_history_reasoning_content=drop_history_reasoning_content,
            )  # fmt: skip
        except (ValueError, TypeError, KeyError) as e:  # JSONDecodeError is a ValueError
            raise DataError(f"{source}: sample {index}: {e}") from None
        if not any(m["role"] == "assistant" for m in messages):
            return None  # nothing to learn from
        if truncate_history:
            messages = _fitting_history(tokenizer, messages, tools, template, seq_length)
        return messages, tools

    def encode(batch: Mapping[str, list]) -> list[Encoded]:
        columns = list(batch)
        rows_of_batch = zip(*(batch[c] for c in columns), strict=True)
        read_rows = [read(dict(zip(columns, values, strict=True))) for values in rows_of_batch]
        kept = [r for r in read_rows if r is not None]
        conversations, tools = [m for m, _ in kept], [t for _, t in kept]
        if nemo:
            encoded = iter(chat(tokenizer, conversations, template, tools=tools))
        else:
            labeled = chat_labels_many(
                tokenizer, conversations, chat_template=template, tools=tools
            )
            encoded = iter(labeled)
        return [None if r is None else next(encoded) for r in read_rows]

    return build_dataset(rows, encode, tokenizer, seq_length, truncation, source)


def _fitting_history(
    tokenizer: Any, messages: Messages, tools: Any, template: str, seq_length: int
) -> Messages:
    """The longest suffix of whole exchanges (after any leading system turns) that fits; the
    last exchange alone when none does (truncation then applies)."""

    def fits(candidate: Messages) -> bool:
        return len(chat_ids(tokenizer, candidate, template, tools)) <= seq_length

    if fits(messages):
        return messages
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    system, history = messages[:head], messages[head:]
    starts = [i for i, m in enumerate(history) if m["role"] == "user"]
    for start in starts:
        if fits(system + history[start:]):
            return system + history[start:]
    return system + history[starts[-1] :] if starts else messages


def _schema_of(row: Mapping[str, Any]) -> str:
    if "messages" in row and row["messages"] is not None:
        return "messages"
    if "conversations" in row and row["conversations"] is not None:
        return "sharegpt"
    if "query" in row and "answers" in row:
        return "xlam"
    raise ValueError(
        f"expected a 'messages', 'conversations' or 'query' + 'answers' column; got {sorted(row)}"
    )


def _list(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"'{what}' must be a list, got {type(value).__name__}")
    return value


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _tools(value: Any) -> list[dict[str, Any]] | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    tools = _json(value)
    if not isinstance(tools, list):
        raise ValueError(f"'tools' must be a list (or its JSON), got {type(tools).__name__}")
    return tools or None


def _from_sharegpt(turn: Mapping[str, Any]) -> dict[str, Any]:
    role = _SHAREGPT_ROLES.get(turn.get("from"))
    if role is None:
        raise ValueError(f"unknown ShareGPT role {turn.get('from')!r}; expected one of {sorted(_SHAREGPT_ROLES)}")  # fmt: skip
    out = {"role": role, "content": turn.get("value", "")}
    if turn.get("reasoning_content"):
        out["reasoning_content"] = str(turn["reasoning_content"])
    return out


def _text(content: Any) -> str:
    """A turn's text: a string as is, the text parts of a list of parts joined, "" for None."""
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, Mapping) and "text" in p)
    return "" if content is None else str(content)


def _call(call_id: str, name: Any, arguments: Any) -> dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a tool call without a name: {arguments!r}")
    if not isinstance(arguments, str):  # OpenAI's format: the arguments as JSON text
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _openai_messages(raw: list, example_id: Any) -> Messages:
    """Chatml or OpenAI turns as OpenAI messages (see the module docstring)."""
    out: Messages = []
    pending: list[str] = []  # the ids of the last calls, for the results that follow
    made = 0  # calls seen so far: call ids are `call_<example id>_<n>`
    prefix = "call" if example_id is None else f"call_{example_id}"
    i = 0
    while i < len(raw):
        role = raw[i].get("role")
        if role not in _ROLES:
            raise ValueError(f"unknown role {role!r} in turn {i}; expected one of {_ROLES}")
        if role == "tool_call":
            calls, pending = [], []
            while i < len(raw) and raw[i].get("role") == "tool_call":
                call = _json(raw[i].get("content") or "{}")
                pending.append(f"{prefix}_{made}")
                calls.append(_call(pending[-1], call.get("name"), call.get("arguments", "")))
                made, i = made + 1, i + 1
            if out and out[-1]["role"] == "assistant" and "tool_calls" not in out[-1]:
                out[-1]["tool_calls"] = calls  # the text the model writes before its calls
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": calls})
            continue
        if role in _RESULTS:
            k = 0
            while i < len(raw) and raw[i].get("role") in _RESULTS:
                given = raw[i].get("tool_call_id")
                call_id = given if isinstance(given, str) and given else None
                call_id = call_id or (pending[k] if k < len(pending) else f"{prefix}_response_{made}_{k}")  # fmt: skip
                content = raw[i].get("content", "")
                content = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)  # fmt: skip
                message = {"role": "tool", "content": content, "tool_call_id": call_id}
                if isinstance(raw[i].get("name"), str) and raw[i]["name"]:
                    message["name"] = raw[i]["name"]
                out.append(message)
                i, k = i + 1, k + 1
            continue
        pending = []
        message = {**raw[i], "content": _text(raw[i].get("content"))}  # other keys kept
        if message.get("tool_calls") is None:
            message.pop("tool_calls", None)
        if role == "assistant":
            if raw[i].get("reasoning_content"):
                message["reasoning_content"] = str(raw[i]["reasoning_content"])
            if raw[i].get("tool_calls") is not None:
                calls = []
                for call in _list(raw[i]["tool_calls"], "tool_calls"):
                    function = call.get("function") if isinstance(call, Mapping) else None
                    if not isinstance(function, Mapping):
                        raise ValueError(f"an assistant tool call without 'function': {call!r}")
                    given = call.get("id")
                    pending.append(
                        given if isinstance(given, str) and given else f"{prefix}_{made}"
                    )
                    calls.append(_call(pending[-1], function.get("name"), function.get("arguments", "")))  # fmt: skip
                    made += 1
                message["tool_calls"] = calls
        out.append(message)
        i += 1
    return out


def _xlam(row: Mapping[str, Any]) -> tuple[Messages, list[dict[str, Any]] | None]:
    """An xLAM row: the query, then one assistant turn of its calls; its tools as OpenAI's."""
    tools = [_xlam_tool(t) for t in _json(row.get("tools")) or [] if t.get("name")]
    example_id = row.get("id")
    calls = []
    for n, call in enumerate(_json(row.get("answers")) or []):
        if call.get("name"):
            call_id = f"call_{n}" if example_id is None else f"call_{example_id}_{n}"
            calls.append(_call(call_id, call["name"], call.get("arguments", "")))
    messages = [
        {"role": "user", "content": row["query"]},
        {"role": "assistant", "content": "", "tool_calls": calls},
    ]
    return messages, tools or None


def _xlam_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """An xLAM tool ({name, description, parameters: {name: {type, description, default}}}) as
    an OpenAI function schema; a parameter without a default is required."""
    properties, required = {}, []
    for name, spec in (tool.get("parameters") or {}).items():
        if spec is None:
            continue
        kind = _XLAM_TYPES.get(str(spec.get("type", "string")).lower(), "string")
        prop = {"type": kind, "description": spec.get("description", "")}
        prop.update({k: spec[k] for k in ("enum", "default") if k in spec})
        if "default" not in spec:
            required.append(name)
        properties[name] = prop
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    function = {"name": tool["name"], "description": tool.get("description", ""), "parameters": parameters}  # fmt: skip
    return {"type": "function", "function": function}
