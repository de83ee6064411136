"""The shell commands of the README and the docs, and how the docs test runs them.

`documented_commands()` reads every ```bash / ```sh / ```shell / ```console block of
README.md, docs/*.md, examples/**/README.md and packages/*/README.md and returns one
`Command` per command: line continuations joined, `# comments` and `$ ` prompts dropped,
whitespace outside quotes collapsed, and `$NAME` / `${NAME}` replaced where the same block
assigns `NAME=...` on a line of its own (the assignment itself is no command). A block that
starts with `#!` is a script, shown rather than run: one command, its shebang line.

`argv(text)` turns a command into the environment and argument list the test runs; `workdir`
makes the temporary working directory a command runs in.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from _shared import REPO

SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\S.*)?$")
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class Command:
    """One documented command: where it is, and its normalised text."""

    file: str  # relative to the repository, with / separators
    line: int  # 1-based, the command's first line
    text: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def doc_files() -> list[Path]:
    """The files whose commands are documented commands, in a fixed order."""
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    files += sorted((REPO / "examples").glob("**/README.md"))
    files += sorted((REPO / "packages").glob("*/README.md"))
    return files


def split_comment(line: str) -> tuple[str, str]:
    """(`line` without its `# comment`, collapsed whitespace outside quotes; the comment).

    A `#` starts a comment where a shell would: outside quotes, at the start of a word."""
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and quote != "'" and i + 1 < len(line):
            out.append(line[i : i + 2])  # an escaped character: never a quote or a comment
            i += 2
            continue
        if quote:
            out.append(ch)
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "#" and (not out or out[-1] == " "):
            return "".join(out).strip(), line[i + 1 :].strip()
        elif ch.isspace():
            if out and out[-1] != " ":
                out.append(" ")
        else:
            out.append(ch)
        i += 1
    return "".join(out).strip(), ""


def _block_commands(path: str, start: int, lang: str, lines: list[str]) -> list[Command]:
    """The commands of one fenced block whose first content line is line `start`."""
    if lines and lines[0].startswith("#!"):
        return [Command(path, start, lines[0].strip() + " ...")]
    commands: list[Command] = []
    variables: dict[str, str] = {}
    pending: list[str] = []
    first = 0

    def expand(match: re.Match[str]) -> str:  # a variable the block assigned; others stay
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    for number, raw in enumerate(lines, start):
        line = raw.rstrip()
        if lang == "console":  # `$ ` starts a command, `> ` continues one, the rest is output
            prompt = "> " if pending else "$ "
            if not line.lstrip().startswith(prompt):
                if not pending:
                    continue
                prompt = ""
            line = line.lstrip()[len(prompt) :]
        if not pending:
            first = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        text, _ = split_comment(" ".join([*pending, line]))
        pending = []
        if not text:
            continue
        assignment = _ASSIGNMENT.match(text)
        if assignment and len(shlex.split(text)) == 1:
            name, value = assignment.group(1), shlex.split(text)[0].split("=", 1)[1]
            variables[name] = value
            continue
        commands.append(Command(path, first, _VARIABLE.sub(expand, text)))
    return commands


def extract(path: Path) -> list[Command]:
    """The commands of the shell blocks of one Markdown file of the repository."""
    return extract_text(path.relative_to(REPO).as_posix(), path.read_text())


def extract_text(name: str, markdown: str) -> list[Command]:
    """The commands of the shell blocks of `markdown`, the text of the file `name`."""
    commands: list[Command] = []
    fence, lang, start, body = "", "", 0, []
    for number, line in enumerate(markdown.splitlines(), 1):
        match = _FENCE.match(line)
        if not fence:
            if match:
                fence, lang, start, body = match.group(1), match.group(2).lower(), number + 1, []
        elif match and match.group(1).startswith(fence) and not match.group(2):
            if lang in SHELL_BLOCKS:
                commands += _block_commands(name, start, lang, body)
            fence = ""
        else:
            body.append(line)
    return commands


def documented_commands() -> list[Command]:
    """Every documented command, file by file (doc_files' order), in the order written."""
    return [command for path in doc_files() for command in extract(path)]


def argv(text: str) -> tuple[dict[str, str], list[str]]:
    """(environment variables, argument list) that run `text` here, without a shell.

    `uv run` is slow to start and runs in this project's environment, which is the one the
    tests run in: `uv run automodel ...` and `automodel ...` become `sys.executable -m
    automodel.cli ...` (the `automodel` console script calls `automodel.cli:entry`), `uv run
    python ...` and `python ...` become `sys.executable ...`; `uv pip ...` runs the uv beside
    this interpreter, or on PATH."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    operators = [word for word in lexer if word and set(word) <= set("();<>|&")]
    if operators:
        raise ValueError(
            f"{text!r} needs a shell ({' '.join(operators)}): run it as separate commands"
        )
    words = shlex.split(text)
    env: dict[str, str] = {}
    while words and _ASSIGNMENT.match(words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    if words[:2] == ["uv", "run"]:
        words = words[2:]
    if words[:1] == ["automodel"]:
        words = [sys.executable, "-m", "automodel.cli", *words[1:]]
    elif words[:1] == ["python"]:
        words = [sys.executable, *words[1:]]
    elif words[:1] == ["uv"]:
        beside = Path(sys.executable).with_name("uv")
        uv = str(beside) if beside.exists() else shutil.which("uv")
        words = [uv, *words[1:]] if uv else [sys.executable, "-m", "uv", *words[1:]]
    return env, words


def workdir(root: Path) -> Path:
    """`root` set up as a working directory for documented commands: `examples` is a link to
    the repository's, so the commands' relative paths read the repository's example configs
    and assets while everything they write (`runs/...`) lands in `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    return root


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of every file under `root`, bytecode caches left out."""
    return {
        path.relative_to(root).as_posix(): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }
