"""Recipes for the automodel CLI tests; each is a `fn(argv: list[str]) -> int` entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ._signals import wait

__all__ = ["echo", "record_argv", "wait"]

_ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def echo(argv: list[str]) -> int:
    """Write the config values it received to the JSON file named by output.path."""
    from automodel.core.config import Section, recipe_main

    sections = {"output": Section(required=True), "model": Section()}
    return recipe_main(argv, sections=sections, run=_echo_run)


def _echo_run(cfg: Any) -> None:
    seen = {
        "value": cfg.get("output.value", None),
        "name": cfg.get("model.name", None),
        "env": {key: os.environ.get(key) for key in _ENV_KEYS},
    }
    Path(cfg.output.path).write_text(json.dumps(seen))


def record_argv(argv: list[str]) -> int:
    """Record the argument list it was called with; exit with $AUTOMODEL_TEST_EXIT."""
    record = {"argv": argv, "env": {key: os.environ.get(key) for key in _ENV_KEYS}}
    Path(os.environ["AUTOMODEL_TEST_RECORD"]).write_text(json.dumps(record))
    return int(os.environ.get("AUTOMODEL_TEST_EXIT", "0"))
