"""Running and validating recipes in-process: argv pass-through, exit codes, recipe_main."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

OVERRIDES = ["--a.b=3", "--optimizer.lr", "1e-4", "--+new.key", "1", "--~old.key"]
OVERRIDES += ["--neg", "-1"]


@dataclass
class Record:
    """Where the `test.argv` recipe writes what it saw, and the environment that tells it so."""

    path: Path

    @property
    def env(self) -> dict[str, str]:
        return {"AUTOMODEL_TEST_RECORD": str(self.path)}

    def __call__(self) -> dict:
        return json.loads(self.path.read_text())


@pytest.fixture
def record(tmp_path: Path) -> Record:
    return Record(tmp_path / "record.json")


def test_recipe_gets_config_and_overrides_verbatim_in_order(run_cli, write_config, record):
    config = write_config("a:\n  b: 1\n")
    result = run_cli("test", "argv", "-c", str(config), *OVERRIDES, env=record.env)
    assert result.returncode == 0, result.stderr
    assert record()["argv"] == ["-c", str(config), *OVERRIDES]
    assert record()["env"]["RANK"] is None  # in-process: no launcher


def test_cli_flags_are_found_anywhere_and_debug_is_forwarded_first(run_cli, write_config, record):
    write_config("a: 1\n")
    args = ["--debug", "test", "--nproc-per-node=1", "argv", "--x.y", "2", "--config=config.yaml"]
    result = run_cli(*args, "--nnodes", "1", "--z", env=record.env)
    assert result.returncode == 0, result.stderr
    assert record()["argv"] == ["--debug", "-c", "config.yaml", "--x.y", "2", "--z"]


def test_grants_are_cli_flags_anywhere_and_reach_the_recipe_before_the_config(
    run_cli, write_config, record
):
    """--allow-import / --trust-remote-code are the command line's, wherever they stand."""
    write_config("a: 1\n")
    args = ["--trust-remote-code", "test", "--allow-import", "mypkg", "argv", "-c", "config.yaml"]
    result = run_cli(*args, "--x", "1", "--allow-import=torch.hub.load", env=record.env)
    assert result.returncode == 0, result.stderr
    grants = ["--allow-import", "mypkg", "--allow-import", "torch.hub.load", "--trust-remote-code"]
    assert record()["argv"] == [*grants, "-c", "config.yaml", "--x", "1"]
    result = run_cli("test", "argv", "-c", "config.yaml", "--allow-import", env=record.env)
    assert result.returncode == 2 and "--allow-import is missing its value" in result.stderr


def test_everything_after_double_dash_goes_to_the_recipe(run_cli, write_config, record):
    write_config("a: 1\n")
    result = run_cli("test", "argv", "-c", "config.yaml", "--", "--debug", "-c", env=record.env)
    assert result.returncode == 0, result.stderr
    assert record()["argv"] == ["-c", "config.yaml", "--debug", "-c"]


def test_validate_prepends_validate_only_after_debug(run_cli, write_config, record):
    write_config("a: 1\n")
    result = run_cli("validate", "test", "argv", "-c", "config.yaml", "--a", "2", env=record.env)
    assert result.returncode == 0, result.stderr
    assert record()["argv"] == ["--validate-only", "-c", "config.yaml", "--a", "2"]
    result = run_cli("validate", "test", "argv", "-c", "config.yaml", "--debug", env=record.env)
    assert record()["argv"] == ["--debug", "--validate-only", "-c", "config.yaml"]


@pytest.mark.parametrize(
    ("launch", "world"),
    [
        ([], "1"),
        (["--nproc-per-node", "4"], "4"),
        (["--nnodes=2", "--nproc-per-node=2", "--rdzv-endpoint", "node0:29500"], "4"),
    ],
)
def test_validate_checks_the_world_size_of_the_launch(run_cli, write_config, record, launch, world):
    """`automodel validate ... --nproc-per-node 4` checks the config as 4 processes would."""
    write_config("a: 1\n")
    result = run_cli("validate", "test", "argv", "-c", "config.yaml", *launch, env=record.env)
    assert result.returncode == 0, result.stderr
    assert record()["env"]["WORLD_SIZE"] == world


@pytest.mark.parametrize("command", [[], ["validate"]])
def test_recipe_exit_code_propagates(run_cli, write_config, record, command):
    write_config("a: 1\n")
    env = {**record.env, "AUTOMODEL_TEST_EXIT": "3"}
    result = run_cli(*command, "test", "argv", "-c", "config.yaml", env=env)
    assert result.returncode == 3
    assert "automodel: error" not in result.stderr


def test_python_dash_m_runs_the_cli(cli_env, write_config, record, tmp_path):
    write_config("a: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "automodel.cli", "test", "argv", "-c", "config.yaml", "--k", "v"],
        env={**cli_env, **record.env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert record()["argv"] == ["-c", "config.yaml", "--k", "v"]


def test_dry_run_in_process_prints_the_equivalent_command(run_cli, write_config, record):
    write_config("a: 1\n")
    result = run_cli("test", "argv", "-c", "config.yaml", "--k", "v w", "--dry-run", env=record.env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert shlex.split(result.stdout) == [
        *[sys.executable, "-m", "automodel.cli"],
        *["test", "argv", "-c", "config.yaml", "--k", "v w"],
    ]
    assert not record.path.exists()


# The three tests below go through the recipe protocol helper automodel.core.config.recipe_main.


ECHO_CONFIG = "output:\n  path: seen.json\n  value: 1\nmodel:\n  name: base\n"


def test_in_process_run_with_typed_override(run_cli, write_config, tmp_path):
    write_config(ECHO_CONFIG)
    args = ["--output.value", "1e-4", "--model.name", "tiny"]
    result = run_cli("test", "echo", "-c", "config.yaml", *args, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["value"] == 1e-4 and isinstance(seen["value"], float)
    assert seen["name"] == "tiny"
    assert seen["env"]["RANK"] is None


def test_validate_accepts_a_good_config_without_running(run_cli, write_config, tmp_path):
    write_config(ECHO_CONFIG)
    result = run_cli("validate", "test", "echo", "-c", "config.yaml", timeout=120)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "seen.json").exists()


def test_validate_rejects_a_bad_config_naming_the_key(run_cli, write_config, tmp_path):
    write_config(ECHO_CONFIG + "modle:\n  name: typo\n")
    result = run_cli("validate", "test", "echo", "-c", "config.yaml", timeout=120)
    assert result.returncode == 2, result.stderr
    assert "modle: unknown section (did you mean 'model'?)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "seen.json").exists()
