"""Shared fixtures for the recipe tests: the repository as working directory, smaller data sets."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


TIMING = ("tps", "tps_per_gpu", "mfu", "mem")  # wall-clock measurements differ between runs


def run_recipe(config: Path, overrides: list[str]) -> Any:
    """Load `config` with `overrides`, set the LLM recipe up and train it; return the recipe."""
    from automodel.core.config import load_config
    from automodel.recipes.llm import FinetuneRecipeForCausalLM

    recipe = FinetuneRecipeForCausalLM(load_config(config, overrides))
    recipe.setup()
    recipe.run_train_validation_loop()
    return recipe


def jsonl_rows(path: Path, drop_timing: bool = True) -> list[dict]:
    """The rows of a metrics JSONL file, without the wall-clock fields unless asked."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    if not drop_timing:
        return rows
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture(name="run_recipe", scope="session")
def run_recipe_fixture() -> Callable[[Path, list[str]], Any]:
    """`run_recipe(config, overrides)`, for test modules."""
    return run_recipe


@pytest.fixture(name="jsonl_rows", scope="session")
def jsonl_rows_fixture() -> Callable[..., list[dict]]:
    """`jsonl_rows(path, drop_timing=True)`, for test modules."""
    return jsonl_rows
