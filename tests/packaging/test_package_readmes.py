"""Every package README says what it depends on, and each of its python blocks is a complete
program (or marked as the continuation of one) that the suite runs: here for the packages whose
own tests do not (automodel-peft's and automodel-moe's README tests run theirs)."""

from __future__ import annotations

import pytest
from _readme import finish, readme_examples, start_example, unmarked_blocks
from _shared import REPO

READMES = sorted(REPO.glob("packages/*/README.md"))
RUN_ELSEWHERE = {"automodel-peft", "automodel-moe"}  # tests/peft, tests/moe run their blocks
# what each example must print
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


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """Every example of the READMEs run here, started together (most of each is imports)."""
    runs = {}
    for readme in READMES:
        package = readme.parent.name
        if package in RUN_ELSEWHERE:
            continue
        for name, code in readme_examples(readme.read_text()).items():
            tmp = tmp_path_factory.mktemp(f"{package}-{name}")
            runs[package, name] = start_example(code, tmp, cwd=REPO)  # assets by repo path
    yield runs
    for proc in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_the_examples_here_are_the_expected_ones(started) -> None:
    assert set(started) == set(EXPECTED)


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: f"{k[0]}:{k[1]}")
def test_readme_example_runs(started, key) -> None:
    code, out, err = finish(started[key])
    assert code == 0, f"{key} failed ({code}):\n{out}\n{err[-3000:]}"
    assert EXPECTED[key] in out, out
