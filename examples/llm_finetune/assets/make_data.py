"""Write the tiny word-reversal chat dataset used by the offline examples (seeded, reproducible).

Each chat sample asks the assistant to reverse a short list of words, a task a tiny model learns
in a few hundred steps on a CPU, so the validation loss visibly falls. The function-calling
version (`tool_calls_*.jsonl`, ShareGPT layout with a `tools` column) has the assistant call a
`reverse` tool with the words, read its result and answer with it.

    python examples/llm_finetune/assets/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [
    "ant",
    "bee",
    "cat",
    "dog",
    "eel",
    "fox",
    "gnu",
    "hen",
    "ibis",
    "jay",
    "koi",
    "lynx",
    "mole",
    "newt",
    "owl",
    "pig",
    "quail",
    "rat",
    "seal",
    "toad",
    "urchin",
    "vole",
    "wolf",
    "yak",
]
HERE = Path(__file__).parent


def sample(rng: random.Random) -> dict[str, list[dict[str, str]]]:
    """One chat sample: the user lists 3-6 words, the assistant answers them reversed."""
    words = rng.sample(WORDS, rng.randint(3, 6))
    return {
        "messages": [
            {"role": "user", "content": "reverse " + " ".join(words)},
            {"role": "assistant", "content": " ".join(reversed(words))},
        ]
    }


REVERSE_TOOL = {
    "type": "function",
    "function": {
        "name": "reverse",
        "description": "reverse a list of words",
        "parameters": {"type": "object", "properties": {"words": {"type": "string"}}},
    },
}


def tool_sample(rng: random.Random) -> dict[str, str | list[dict[str, str]]]:
    """One function-calling sample: the user's words go to the tool, its result is the answer."""
    words = rng.sample(WORDS, rng.randint(3, 6))
    answer = " ".join(reversed(words))
    call = {"name": "reverse", "arguments": {"words": " ".join(words)}}
    return {
        "tools": json.dumps([REVERSE_TOOL]),
        "conversations": [
            {"from": "human", "value": "reverse " + " ".join(words)},
            {"from": "function_call", "value": json.dumps(call)},
            {"from": "observation", "value": answer},
            {"from": "gpt", "value": answer},
        ],
    }


def write(path: Path, rows: list[dict]) -> None:
    """Write rows as JSON lines."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def as_text(row: dict[str, list[dict[str, str]]]) -> dict[str, str]:
    """The same sample as one line of plain text, for the pre-training example."""
    question, answer = (m["content"] for m in row["messages"])
    return {"text": f"{question} <|assistant|> {answer}"}


def main() -> None:
    """Write the chat train/validation splits (4000/200), their plain-text versions and the
    function-calling splits (400/40)."""
    rng = random.Random(1234)
    rows = [sample(rng) for _ in range(4200)]
    write(HERE / "reverse_train.jsonl", rows[:4000])
    write(HERE / "reverse_validation.jsonl", rows[4000:])
    write(HERE / "reverse_text_train.jsonl", [as_text(r) for r in rows[:4000]])
    write(HERE / "reverse_text_validation.jsonl", [as_text(r) for r in rows[4000:]])
    tools = random.Random(4321)  # its own generator: the files above stay as they were
    calls = [tool_sample(tools) for _ in range(440)]
    write(HERE / "tool_calls_train.jsonl", calls[:400])
    write(HERE / "tool_calls_validation.jsonl", calls[400:])


if __name__ == "__main__":
    main()
