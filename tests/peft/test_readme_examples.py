"""The examples of packages/automodel-peft/README.md run as written (each in a process of its own but one).

A runnable example is a fenced ``python`` block right after an HTML comment
``<!-- test: NAME -->``; a block marked ``<!-- test: NAME (continued) -->`` is appended
to the example NAME (it goes on from that example's variables). Every example runs in
one fresh, isolated (``-I``) ``sys.executable`` process with ``TMPDIR`` pointing into
the test's own temporary directory, so the files it writes (through ``tempfile``) can
be checked; the MoE experts example runs in the test's own process instead (its imports
are loaded there already).
The packaging tests run the torch-only example inside the wheel's own environment,
through :func:`readme_examples`.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import _readme
import pytest
from _readme import finish, run_example, start_example  # noqa: F401  (run_example: test_wheels)

README = Path(__file__).resolve().parents[2] / "packages" / "automodel-peft" / "README.md"
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}


def readme_examples(text: str | None = None) -> dict[str, str]:
    """The marked python blocks of this README (or of ``text``) by name."""
    return _readme.readme_examples(README.read_text() if text is None else text)


# Which example each test checks; the fixture below starts those of the selected tests at
# once, so that they overlap (most of each run is importing torch and transformers).
EXAMPLE_OF_TEST = {
    "test_readme_plain_loop": "plain-loop",
    "test_readme_trainer_peft_and_export": "trainer",
    "test_readme_qlora": "qlora",
}
HAS_TRAINER_DEPS = all(importlib.util.find_spec(m) for m in ("transformers", "accelerate", "peft"))
HAS_QLORA_DEPS = all(importlib.util.find_spec(m) for m in ("transformers", "torchao"))


@pytest.fixture(scope="module")
def started(request, tmp_path_factory) -> Iterator[dict[str, tuple[subprocess.Popen, Path]]]:
    """The examples the selected tests of this module check, all started together."""
    names = {
        EXAMPLE_OF_TEST[item.originalname]
        for item in request.session.items
        if item.module is request.module and item.originalname in EXAMPLE_OF_TEST
    }
    if not HAS_TRAINER_DEPS:
        names.discard("trainer")
    if not HAS_QLORA_DEPS:
        names.discard("qlora")
    examples = readme_examples()
    runs = {}
    for name in sorted(names):
        tmp = tmp_path_factory.mktemp(name)
        runs[name] = (start_example(examples[name], tmp), tmp)
    yield runs
    for proc, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _succeeded(started: dict, name: str) -> tuple[str, Path]:
    """Stdout and temporary folder of a started example, which must exit 0."""
    proc, tmp = started[name]
    code, out, err = finish(proc)
    assert code == 0, f"README example {name!r} failed ({code}):\n{out}\n{err}"
    return out, tmp


def _folders_with(tmp: Path, names: set[str]) -> list[Path]:
    """Folders under ``tmp`` that hold all of ``names``."""
    return sorted(
        p for p in tmp.rglob("*") if p.is_dir() and names <= {c.name for c in p.iterdir()}
    )


def test_readme_marks_the_examples():
    examples = readme_examples()
    assert set(examples) == {"plain-loop", "trainer", "qlora", "moe-experts"}, sorted(examples)
    assert _readme.unmarked_blocks(README.read_text()) == []
    assert "merge_lora" in examples["trainer"], "the export block is not appended to 'trainer'"
    # The first example must run with the wheel alone: torch, safetensors and the stdlib.
    imports = re.findall(r"^(?:from|import) (\w+)", examples["plain-loop"], re.MULTILINE)
    assert set(imports) <= {"tempfile", "pathlib", "torch", "automodel"}, imports


def test_readme_plain_loop(started):
    out, tmp_path = _succeeded(started, "plain-loop")
    assert "adapter reloaded into a fresh base model" in out, out
    assert "LoRA on 2 modules" in out, out
    adapters = _folders_with(tmp_path, ADAPTER_FILES)
    assert [p.name for p in adapters] == ["adapter"], adapters


@pytest.mark.skipif(
    not HAS_TRAINER_DEPS, reason="the Trainer example needs transformers, accelerate and peft"
)
def test_readme_trainer_peft_and_export(started):
    out, tmp_path = _succeeded(started, "trainer")
    assert "peft loaded the adapter from" in out, out
    assert "merged model saved to" in out, out
    adapters = _folders_with(tmp_path, ADAPTER_FILES)
    assert [p.name for p in adapters] == ["adapter"], adapters
    merged = _folders_with(tmp_path, {"config.json", "model.safetensors"})
    assert {p.name for p in merged} == {"base", "merged", "merged-in-place"}, merged


@pytest.mark.skipif(not HAS_QLORA_DEPS, reason="the QLoRA example needs transformers and torchao")
def test_readme_qlora(started):
    out, _ = _succeeded(started, "qlora")
    assert "LoRA on 14 modules, 14 base weights in NF4" in out, out


@pytest.mark.skipif(not HAS_TRAINER_DEPS, reason="the MoE example needs transformers")
def test_readme_moe_experts(capsys, tmp_path, monkeypatch):
    """Run in this process (transformers is imported here already: no process to start)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    exec(compile(readme_examples()["moe-experts"], "README:moe-experts", "exec"), {})
    out = capsys.readouterr().out
    assert "LoRA on 4 modules and 4 stacked weights" in out, out
    assert "expert adapter reloaded from" in out, out
    patterns = "rank_pattern {'gate_up_proj': 2, 'down_proj': 2} alpha_pattern {'v_proj': 16}"
    assert patterns in out, out
    assert len(_folders_with(tmp_path, ADAPTER_FILES)) == 2
