"""`automodel --help`, `--version` and `list`: fast paths that must not import recipes or torch."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

DESCRIPTIONS = {
    "test.argv": "Record the argument list it was called with; exit with $AUTOMODEL_TEST_EXIT.",
    "test.broken": "Never runs: importing this module fails.",
    "test.dist": "All-reduce the ranks over gloo and write one JSON file per rank to output.dir.",
    "test.echo": "Write the config values it received to the JSON file named by output.path.",
    "test.nodoc": "(no description)",
    "test.wait": "Wait for SIGTERM and record that it arrived (checks signal forwarding).",
}


def test_help_explains_usage_launch_flags_and_overrides(run_cli):
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("usage: automodel <command> <domain> -c CONFIG")
    for text in ("automodel list", "automodel validate", "--nproc-per-node N", "--nnodes N"):
        assert text in out
    for text in ("--node-rank R", "--master-addr HOST", "--master-port PORT", "--rdzv-endpoint"):
        assert text in out
    for text in ("--section.key VALUE", "--+section.key VALUE", "--~section.key", "--dry-run"):
        assert text in out
    assert "test.echo" in out  # the installed recipes are named


def test_command_help_names_its_domains(run_cli):
    result = run_cli("test", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: automodel test <domain> -c CONFIG" in result.stdout
    assert "installed domains for 'test': argv, broken, dist, echo, nodoc, wait" in result.stdout
    assert "--nproc-per-node" in result.stdout

    result = run_cli("test", "echo", "--help")
    assert result.returncode == 0, result.stderr
    assert f"test.echo: {DESCRIPTIONS['test.echo']}" in result.stdout

    for command in ("validate", "list"):
        result = run_cli(command, "--help")
        assert result.returncode == 0, result.stderr
        assert f"usage: automodel {command}" in result.stdout


def test_version_is_the_distribution_version(run_cli):
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"automodel-cli {version('automodel-cli')}"


def test_list_shows_every_recipe_with_its_docstring_and_distribution(run_cli):
    result = run_cli("list")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("test.")]
    assert [line.split()[0] for line in lines] == sorted(DESCRIPTIONS)
    for line in lines:
        name = line.split()[0]
        assert DESCRIPTIONS[name] in line, line
        assert line.endswith("(automodel-test-recipes 0.1.0)"), line


def test_list_filters_by_command(run_cli):
    result = run_cli("list", "test")
    assert result.returncode == 0
    assert "test.echo" in result.stdout
    result = run_cli("list", "nosuchcommand")
    assert result.returncode == 0
    assert "No recipes for 'nosuchcommand' are installed" in result.stdout
    result = run_cli("list", "--optimizer.lr", "1")
    assert result.returncode == 2
    assert result.stderr.startswith("automodel: error:")


def test_list_and_help_import_no_recipe_torch_or_other_automodel_package(cli_env):
    check = (
        "import sys\n"
        "from automodel.cli import main\n"
        "assert main(['list']) == 0 and main(['--help']) == 0 and main(['test', '--help']) == 0\n"
        "assert main(['nosuch', 'recipe', '-c', 'x.yaml']) == 2\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', "
        "'automodel_test_recipes', 'yaml')) or (m.startswith('automodel.') "
        "and not m.startswith('automodel.cli')))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "test.echo" in result.stdout


def test_no_command_is_a_usage_error(run_cli):
    result = run_cli()
    assert result.returncode == 2
    assert result.stderr.startswith("automodel: error: no command given")
    assert "Traceback" not in result.stderr
