"""Write the second corpus of the indexed pre-training example: lists of words copied as they are.

Each line is "dog ant cat <|assistant|> dog ant cat": the word-reversal corpus's words and
format without the word "reverse", so a model pre-trained on the blend of both has to read the
first word to know which of the two tasks a line is (seeded, reproducible).

    python examples/llm_pretrain/assets/make_copy_text.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1] / "llm_finetune" / "assets"))
from make_data import WORDS  # noqa: E402  (the reversal corpus's words)


def main() -> None:
    """Write copy_text.jsonl: 2000 lines of 3-6 words and their copy."""
    rng = random.Random(4321)
    lines = []
    for _ in range(2000):
        words = " ".join(rng.sample(WORDS, rng.randint(3, 6)))
        lines.append(json.dumps({"text": f"{words} <|assistant|> {words}"}) + "\n")
    (HERE / "copy_text.jsonl").write_text("".join(lines))


if __name__ == "__main__":
    main()
