"""Shared fixtures for the recipe tests: the repository as working directory, smaller data sets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "examples/llm_finetune/assets"


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    """Run from the repository root: the example configs use paths relative to it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        yield mp


def head_of_asset(name: str, dst: Path, lines: int) -> Path:
    """The first `lines` rows of an example dataset, written to `dst`: a quicker start-up."""
    rows = (ASSETS / name).read_text().splitlines(keepends=True)
    dst.write_text("".join(rows[:lines]))
    return dst


@pytest.fixture(name="head_of_asset", scope="session")
def head_of_asset_fixture() -> Callable[[str, Path, int], Path]:
    """`head_of_asset(name, dst, lines)`, for test modules (conftest cannot be imported)."""
    return head_of_asset
