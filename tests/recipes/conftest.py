"""Shared fixtures for the recipe tests: the repository as working directory, smaller data sets."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "examples/llm_finetune/assets"
AUTOMODEL = Path(sys.executable).with_name("automodel")


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


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """A folder with `train.jsonl` (64 rows) and `val.jsonl` (8 rows) of the reverse task."""
    root = tmp_path_factory.mktemp("small_data")
    head_of_asset("reverse_train.jsonl", root / "train.jsonl", 64)
    head_of_asset("reverse_validation.jsonl", root / "val.jsonl", 8)
    return root


def short_run(run_dir: Path, data: Path, steps: int, every: int, *extra: str) -> list[str]:
    """Overrides of a short run on `data` (see small_data): global batch 8 (local 2), `steps`
    steps, validation and a checkpoint every `every` steps, a log line per step."""
    return [
        "--step_scheduler.global_batch_size=8",
        "--step_scheduler.local_batch_size=2",
        f"--step_scheduler.max_steps={steps}",
        f"--step_scheduler.val_every_steps={every}",
        f"--step_scheduler.ckpt_every_steps={every}",
        "--step_scheduler.log_every_steps=1",
        f"--dataset.path={data / 'train.jsonl'}",
        f"--validation_dataset.path={data / 'val.jsonl'}",
        f"--logging.run_dir={run_dir}",
        f"--checkpoint.checkpoint_dir={run_dir}/checkpoints",
        "--+logging.progress=false",
        "--lr_scheduler.warmup_steps=1",
        *extra,
    ]


def run_cli(config: Path, overrides: list[str], nproc: int = 2) -> str:
    """`automodel finetune llm -c config --nproc-per-node N` (a real torchrun job); its stderr."""
    command = [str(AUTOMODEL), "finetune", "llm", "-c", str(config), "--nproc-per-node", str(nproc)]
    result = subprocess.run(
        [*command, *overrides], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stderr


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


@pytest.fixture(name="short_run", scope="session")
def short_run_fixture() -> Callable[..., list[str]]:
    """`short_run(run_dir, data, steps, every, *extra)`, for test modules."""
    return short_run


@pytest.fixture(name="run_cli", scope="session")
def run_cli_fixture() -> Callable[..., str]:
    """`run_cli(config, overrides, nproc=2)`, for test modules."""
    return run_cli


@pytest.fixture(name="jsonl_rows", scope="session")
def jsonl_rows_fixture() -> Callable[..., list[dict]]:
    """`jsonl_rows(path, drop_timing=True)`, for test modules."""
    return jsonl_rows
