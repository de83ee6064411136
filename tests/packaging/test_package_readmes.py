"""Every package README says what it depends on, and each of its python blocks is a complete
program (or marked as the continuation of one) that the suite runs: here for the packages whose
own tests do not (automodel-peft's and automodel-moe's README tests run theirs)."""

from __future__ import annotations

import pytest
from _readme import readme_examples, unmarked_blocks
from _shared import REPO

READMES = sorted(REPO.glob("packages/*/README.md"))
RUN_ELSEWHERE = {"automodel-peft", "automodel-moe"}  # tests/peft, tests/moe run their blocks
# what each example run here must print
EXPECTED = {
    ("automodel-core", "config"): "AdamW 3e-05",
    ("automodel-core", "data-and-loss"): "packed rows, loss",
    ("automodel-checkpoint", "save-and-resume"): "same weights as an uninterrupted run: True",
    ("automodel-distributed", "fsdp2-loop"): "step 2 loss",
    ("automodel-distributed", "no-sync"): "one step over 3 micro-batches",
}


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.parent.name)
def test_every_python_block_is_a_marked_example_and_dependencies_are_stated(readme) -> None:
    text = readme.read_text()
    assert unmarked_blocks(text) == [], f"{readme}: python blocks without <!-- test: NAME -->"
    readme_examples(text)  # names are unique, continuations follow their example
    assert "depends on" in text.lower(), f"{readme}: say what the package depends on"


def test_the_examples_here_are_the_expected_ones() -> None:
    found = {
        (readme.parent.name, name)
        for readme in READMES
        if readme.parent.name not in RUN_ELSEWHERE
        for name in readme_examples(readme.read_text())
    }
    assert found == set(EXPECTED)


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: f"{k[0]}:{k[1]}")
def test_readme_example_runs(key, monkeypatch, capsys) -> None:
    """Run as a script in this process (torch is imported already), from the repository root
    (the examples read its assets by relative path)."""
    package, name = key
    code = readme_examples((REPO / "packages" / package / "README.md").read_text())[name]
    monkeypatch.chdir(REPO)
    exec(compile(code, f"{package}/README.md[{name}]", "exec"), {"__name__": "__main__"})
    assert EXPECTED[key] in capsys.readouterr().out
