"""Fixtures for the CLI tests: the installed console script and a test recipe distribution."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "recipe_fixture"
AUTOMODEL = Path(sys.executable).with_name("automodel")
# Variables a surrounding launcher could set; a recipe run in-process must not see them.
_DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Secrets the SLURM launch forwards by name when set: the tests decide when they are.
_SECRET_ENV = (
    "HF_TOKEN",
    "HF_HUB_TOKEN",
    "WANDB_API_KEY",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
)

RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def recipes_dir(tmp_path_factory: pytest.TempPathFactory, install_into) -> Path:
    """The fixture recipe package, installed into a temporary --target directory."""
    return install_into(tmp_path_factory.mktemp("recipes"), FIXTURE)


@pytest.fixture(scope="session")
def cli_env(recipes_dir: Path) -> dict[str, str]:
    """Environment for CLI subprocesses: the test recipes on PYTHONPATH."""
    skip = {*_DISTRIBUTED_ENV, *_SECRET_ENV}
    env = {k: v for k, v in os.environ.items() if k not in skip and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(recipes_dir), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def run_cli(cli_env: dict[str, str], tmp_path: Path) -> RunCli:
    """Run the installed `automodel` script in tmp_path: run_cli(*args, env={...}, timeout=...)."""
    assert AUTOMODEL.is_file(), f"console script not found at {AUTOMODEL}"

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(AUTOMODEL), *args],
            env={**cli_env, **(env or {})},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a YAML config into tmp_path and return its path."""

    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
