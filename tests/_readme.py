"""The runnable python examples of the package READMEs: how they are marked and run.

A runnable example is a fenced ``python`` block right after an HTML comment
``<!-- test: NAME -->``; a block marked ``<!-- test: NAME (continued) -->`` is appended to the
example NAME (it goes on from that example's variables). Every example runs in a fresh,
isolated (``-I``) interpreter, offline, with ``TMPDIR`` under the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TIMEOUT_S = 300
MARKED = re.compile(
    r"<!--\s*test:\s*(?P<name>[\w-]+)(?P<continued>\s+\(continued\))?\s*-->\s*\n"
    r"```python\n(?P<code>.*?)^```",
    re.DOTALL | re.MULTILINE,
)
ANY_BLOCK = re.compile(r"^```python\n", re.MULTILINE)


def readme_examples(text: str) -> dict[str, str]:
    """The marked python blocks of a README by name, continuations appended in order."""
    examples: dict[str, str] = {}
    for match in MARKED.finditer(text):
        name, code = match["name"], match["code"]
        if match["continued"]:
            if name not in examples:
                raise ValueError(f"README block '{name} (continued)' comes before '{name}'")
            examples[name] += "\n" + code
        elif name in examples:
            raise ValueError(f"two README blocks are marked '{name}'")
        else:
            examples[name] = code
    return examples


def unmarked_blocks(text: str) -> list[int]:
    """Line numbers of the python blocks no `<!-- test: ... -->` comment marks."""
    marked = {match.start("code") for match in MARKED.finditer(text)}
    return [
        text.count("\n", 0, block.start()) + 1
        for block in ANY_BLOCK.finditer(text)
        if block.end() not in marked
    ]


def start_example(
    code: str, tmp: Path, python: str = sys.executable, cwd: Path | None = None
) -> subprocess.Popen:
    """Start one example in a fresh interpreter, offline, its temporary files under ``tmp``."""
    env = {**os.environ, "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    script = tmp / "example.py"
    script.write_text(code)
    return subprocess.Popen(
        [python, "-I", str(script)],  # -I: no user site-packages, no PYTHON* variables
        cwd=cwd or tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT_S) -> tuple[int, str, str]:
    """Wait for a started example: exit code, stdout, stderr (killed after ``timeout``)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n(killed after {timeout} s)"
    return proc.returncode, out, err


def run_example(code: str, tmp: Path, python: str = sys.executable) -> tuple[int, str, str]:
    """Run one example to the end: exit code, stdout, stderr."""
    return finish(start_example(code, tmp, python))
