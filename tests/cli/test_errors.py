"""User mistakes exit 2 with one `automodel: error:` paragraph; `--debug` adds the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = "output:\n  dir: out\n"


def assert_user_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.startswith("automodel: error: ")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one paragraph
    for fragment in fragments:
        assert fragment in result.stderr


def test_unknown_recipe_names_it_lists_installed_and_suggests(run_cli, write_config):
    config = write_config(CONFIG)
    result = run_cli("tset", "echo", "-c", str(config))
    assert_user_error(
        result,
        "no recipe named 'tset.echo' is installed",
        "Did you mean 'test.echo'?",
        "Installed recipes: benchmark.llm, finetune.bi_encoder, finetune.cross_encoder, "
        "finetune.llm, finetune.vlm, kd.llm, mine.hard_negatives, pretrain.llm, "
        "test.argv, test.broken, test.dist, test.echo, test.nodoc, test.wait.",
        "pip install automodel-recipes",
        "'automodel.recipes'",
    )


def test_unknown_recipe_when_none_is_installed(tmp_path):
    # -S skips site-packages, so no distribution (and no recipe) is visible; only the CLI is.
    import automodel.cli

    env = {"PYTHONPATH": str(Path(automodel.cli.__file__).parents[2]), "PATH": os.environ["PATH"]}
    (tmp_path / "config.yaml").write_text(CONFIG)
    command = [sys.executable, "-S", "-m", "automodel.cli"]
    result = subprocess.run(
        [*command, "finetune", "llm", "-c", "config.yaml"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_user_error(
        result, "no recipe named 'finetune.llm' is installed", "No recipes are installed."
    )
    listing = subprocess.run(
        [*command, "list"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 0
    assert listing.stdout.startswith("No recipes are installed.")


def test_debug_shows_the_traceback_of_a_cli_error(run_cli, write_config):
    config = write_config(CONFIG)
    result = run_cli("--debug", "tset", "echo", "-c", str(config))
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert "automodel: error: no recipe named 'tset.echo'" in result.stderr


def test_missing_domain_lists_the_commands_recipes(run_cli):
    result = run_cli("test", "-c", "x.yaml")
    assert_user_error(result, "needs a domain", "test.echo")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["test", "echo"], "missing the config file"),
        (["test", "echo", "-c", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["test", "echo", "-c", "."], "is not a file"),
        (["test", "echo", "-c"], "-c is missing its value"),
        (["test", "echo", "extra", "-c", "config.yaml"], "unexpected argument 'extra'"),
        (["validate"], "needs a recipe"),
    ],
)
def test_config_and_argument_mistakes(run_cli, write_config, args, fragment):
    write_config(CONFIG)
    assert_user_error(run_cli(*args), fragment)


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--nproc-per-node", "0"], "--nproc-per-node expects a positive integer, got '0'"),
        (["--nproc-per-node", "two"], "--nproc-per-node expects a positive integer, got 'two'"),
        (["--nnodes=-1"], "--nnodes expects a positive integer, got '-1'"),
        (["--master-port", "70000"], "--master-port expects a port number between 1 and 65535"),
        (["--node-rank", "x"], "--node-rank expects a non-negative integer"),
        (["--rdzv-endpoint", "node0"], "--rdzv-endpoint expects HOST:PORT"),
        (["--rdzv-endpoint", "node0:http"], "--rdzv-endpoint expects HOST:PORT"),
        (["--rdzv-endpoint", "::1:29400"], "--rdzv-endpoint expects HOST:PORT"),
        (["--nproc-per-node"], "--nproc-per-node is missing its value"),
        (["--nproc-per-node", "--nnodes", "1"], "--nproc-per-node is missing its value"),
        (["--nproc-per-node", "2", "--nproc_per_node", "2"], "given more than once"),
        (["--nnodes", "2"], "--nnodes 2 needs to know where the nodes meet"),
        (["--nnodes", "2", "--master-addr", "node0"], "needs --node-rank"),
        (["--nnodes", "2", "--master-addr", "n0", "--node-rank", "2"], "out of range"),
        (["--rdzv-endpoint", "n0:29400", "--master-addr", "n0"], "cannot be combined"),
        (["--rdzv-id", "job"], "--rdzv-id only applies together with --rdzv-endpoint"),
    ],
)
def test_bad_launch_flags(run_cli, write_config, flags, fragment):
    config = write_config(CONFIG)
    result = run_cli("test", "dist", "-c", str(config), *flags, "--dry-run")
    assert_user_error(result, fragment)


def test_recipe_that_fails_to_import_names_entry_point_and_distribution(run_cli, write_config):
    config = write_config(CONFIG)
    result = run_cli("test", "broken", "-c", str(config))
    assert result.returncode == 1
    assert result.stderr.startswith("automodel: error: could not load recipe 'test.broken'")
    assert "automodel_test_recipes.broken:main" in result.stderr
    assert "automodel-test-recipes 0.1.0" in result.stderr
    assert "No module named 'automodel_test_recipes_missing_dependency'" in result.stderr
    assert "Traceback" not in result.stderr

    result = run_cli("test", "broken", "-c", str(config), "--debug")
    assert result.returncode == 1
    assert "Traceback" in result.stderr
