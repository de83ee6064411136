"""Function-calling data: agent traces and xLAM rows as OpenAI messages with tools, rendered
with the chat template; loss on the assistant turns (their tool calls included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from automodel.core.data import IGNORE_INDEX, DataError, tool_call_dataset, tool_conversation

# renders the tools, each assistant turn's calls and each tool result with its call id
TOOL_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>\ntools:{% for t in tools %} {{ t['function']['name'] }}"
    "{% endfor %}<|end|>\n{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}call {{ c['function']['name'] }}"
    "{{ c['function']['arguments'] }}{% endfor %}{% endif %}<|end|>\n"
    "{% elif m['role'] == 'tool' %}<|user|>\nresult {{ m['tool_call_id'] }}: "
    "{{ m['content'] }}<|end|>\n"
    "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WEATHER = {
    "type": "function",
    "function": {"name": "weather", "description": "", "parameters": {"type": "object"}},
}
GLAIVE = {  # ShareGPT, as llamafactory/glaive_toolcall_en
    "tools": json.dumps([WEATHER]),
    "conversations": [
        {"from": "human", "value": "rain in Oslo?"},
        {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
        {"from": "observation", "value": "rain"},
        {"from": "gpt", "value": "yes, rain"},
    ],
}


def test_agent_layouts_become_openai_messages() -> None:
    """ShareGPT and chatml tool turns: calls merged into one assistant turn (joining its text
    just before), results paired with the call ids in order; OpenAI ids kept; xLAM rows."""
    messages, tools = tool_conversation(GLAIVE)
    assert tools == [WEATHER]
    call = {"name": "weather", "arguments": '{"city": "Oslo"}'}
    assert messages == [
        {"role": "user", "content": "rain in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "call_0", "type": "function", "function": call}],
        },
        {"role": "tool", "content": "rain", "tool_call_id": "call_0"},
        {"role": "assistant", "content": "yes, rain"},
    ]
    chatml = {
        "id": 7,
        "messages": [
            {"role": "user", "content": "two?"},
            {"role": "assistant", "content": "checking", "reasoning_content": "old"},
            {"role": "tool_call", "content": '{"name": "a", "arguments": "{}"}'},
            {"role": "tool_call", "content": '{"name": "b", "arguments": "{}"}'},
            {"role": "tool_response", "content": "1"},
            {"role": "tool_response", "content": {"v": 2}},
            {"role": "assistant", "content": "done", "reasoning_content": "new"},
            {"role": "user", "content": "unanswered"},
        ],
    }
    messages, tools = tool_conversation(
        chatml, trim_incomplete_last_turn=True, drop_history_reasoning_content=True
    )
    assert tools is None
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert messages[1]["content"] == "checking" and "reasoning_content" not in messages[1]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["call_7_0", "call_7_1"]
    assert [(m["tool_call_id"], m["content"]) for m in messages[2:4]] == [
        ("call_7_0", "1"),
        ("call_7_1", '{"v": 2}'),
    ]
    assert messages[4]["reasoning_content"] == "new"

    openai = {
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "x1", "function": {"name": "f", "arguments": {"k": 1}}}],
            },
            {"role": "tool", "content": "r"},
        ]
    }
    messages, _ = tool_conversation(openai)
    assert messages[1]["content"] == "" and messages[1]["tool_calls"][0]["id"] == "x1"
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"k": 1}'
    assert messages[2]["tool_call_id"] == "x1"

    xlam = {
        "id": 3,
        "query": "rain?",
        "tools": json.dumps(
            [
                {
                    "name": "weather",
                    "description": "the weather",
                    "parameters": {
                        "city": {"type": "str", "description": "where"},
                        "days": {"type": "int", "description": "", "default": 1},
                    },
                }
            ]
        ),
        "answers": json.dumps([{"name": "weather", "arguments": {"city": "Oslo"}}]),
    }
    messages, tools = tool_conversation(xlam)
    assert tools == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "the weather",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "description": "where"},
                        "days": {"type": "integer", "description": "", "default": 1},
                    },
                    "required": ["city"],
                },
            },
        }
    ]
    assert messages[1]["tool_calls"] == [
        {"id": "call_3_0", "type": "function", "function": call},
    ]
    with pytest.raises(ValueError, match="unknown ShareGPT role 'robot'"):
        tool_conversation({"conversations": [{"from": "robot", "value": "hi"}]})


@pytest.mark.parametrize("prompt_format", ["automodel", "nemo_automodel"])
def test_tool_calls_are_learned_and_tools_and_results_are_not(
    tokenizer, tmp_path: Path, prompt_format: str
) -> None:
    """The tools and the tool results are rendered but not labeled; each assistant turn is,
    its call included (with NeMo AutoModel's spans, its header too)."""
    path = tmp_path / "agent.jsonl"
    bad = {"conversations": [{"from": "robot", "value": "x"}]}
    path.write_text(json.dumps(GLAIVE) + "\n")
    data = tool_call_dataset(
        tokenizer, path, chat_template=TOOL_TEMPLATE, prompt_format=prompt_format
    )
    sample = data[0]
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    text = tokenizer.decode(ids)
    assert "tools: weather" in text and "result call_0: rain" in text
    learned = tokenizer.decode(
        [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    )
    call = 'call weather{"city": "Oslo"}<|end|>\n'
    header = "<|assistant|>\n" if prompt_format == "nemo_automodel" else ""
    assert learned == f"{header}{call}{header}yes, rain<|end|>\n"

    path.write_text(json.dumps(GLAIVE) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"sample 1: unknown ShareGPT role 'robot'"):
        tool_call_dataset(tokenizer, path, chat_template=TOOL_TEMPLATE)


def test_truncate_history_drops_the_oldest_exchanges(tokenizer, tmp_path: Path) -> None:
    """With `truncate_history`, whole old exchanges go (the system turn stays) until the
    conversation fits seq_length; without it, truncation cuts the last answer off."""
    turns = [{"role": "system", "content": "be brief"}]
    for q, a in (("first question here", "first answer"), ("second", "two")):
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": turns}) + "\n")
    whole = tool_call_dataset(tokenizer, path, chat_template=TOOL_TEMPLATE)[0]["input_ids"]
    last = [turns[0], *turns[3:]]
    short = tool_call_dataset(
        tokenizer, path, chat_template=TOOL_TEMPLATE, seq_length=len(whole) - 1,
        truncate_history=True,
    )[0]  # fmt: skip
    text = tokenizer.decode(short["input_ids"].tolist())
    assert "be brief" in text and "second" in text and "first" not in text
    assert text.endswith("two<|end|>\n")
    expected = tokenizer.apply_chat_template(last, chat_template=TOOL_TEMPLATE, tokenize=False)
    assert text == expected
