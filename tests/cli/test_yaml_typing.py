"""The CLI's private YAML value typing matches automodel.core.config's, on one corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from automodel.cli._slurm_section import _parse_value, _read_yaml
from automodel.core.config._yaml import load_yaml_file, parse_value

# Scalars as written in a config file or on the command line.
CORPUS = [
    "1e-4",
    "1.0e+3",
    "-2E5",
    "+3e2",
    "2.0e-5",
    "1.0e5",
    ".5",
    "-.5",
    "1_000",
    "0x10",
    "0o17",
    "017",
    "0b101",
    "3",
    "-7",
    "1.5",
    ".inf",
    "-.inf",
    ".nan",
    "yes",
    "no",
    "on",
    "off",
    "true",
    "False",
    "null",
    "~",
    "None",
    "'1e-4'",
    '"1e-4"',
    "1e",
    "e5",
    "1.2.3",
    "2024-01-31",
    "2024-01-31 12:30:00",
    "4:00:00",
    "abc",
    "[1e-4, 2, x]",
    "{lr: 1e-4, x: off}",
    "!!str 1e-4",
    "!!float 1",
]


def _typed(value: Any) -> Any:
    """Value and type, recursively, so 1 == 1.0 == True cannot hide a difference."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, repr(value))


@pytest.mark.parametrize("scalar", CORPUS)
def test_cli_and_core_type_yaml_values_alike(scalar: str, tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    text = f"slurm:\n  v: {scalar}\n  {scalar}: key\nlist:\n  - {scalar}\n"
    path.write_text(text, encoding="utf-8")
    core_data, _ = load_yaml_file(path)
    cli_data, _, _ = _read_yaml(str(path))
    assert _typed(cli_data) == _typed(core_data)
    assert _typed(_parse_value(scalar)) == _typed(parse_value(scalar))


def test_cli_reads_exponent_floats_like_core() -> None:
    assert _parse_value("1e-4") == pytest.approx(1e-4) and isinstance(_parse_value("1e-4"), float)
    assert _parse_value("'1e-4'") == "1e-4"


def test_keys_are_names_as_written(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("slurm:\n  on: 1\n  null: 2\n  1e-4: 3\n  'yes': 4\n", encoding="utf-8")
    core_data, _ = load_yaml_file(path)
    cli_data, _, _ = _read_yaml(str(path))
    assert list(core_data["slurm"]) == ["on", "null", "1e-4", "yes"]
    assert cli_data == core_data
    assert parse_value("{on: 1}") == _parse_value("{on: 1}") == {"on": 1}
