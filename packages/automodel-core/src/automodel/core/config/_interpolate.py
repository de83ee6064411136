"""Environment-variable interpolation: `${VAR}` and `${VAR,default}` inside config strings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ._errors import Problem
from ._node import locate
from ._yaml import parse_value

# `$${...}` is an escaped literal; `${NAME}` or `${NAME,default}` is replaced.
_PATTERN = re.compile(r"\$(\$?)\{([^{}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(
    data: Any, environ: Mapping[str, str], where: dict[str, str], path: str = ""
) -> tuple[Any, dict[str, str], list[Problem]]:
    """Replace `${VAR}` references; return the new data, the templates used per key, and problems."""
    templates: dict[str, str] = {}
    problems: list[Problem] = []

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, f"{key}.{k}" if key else k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            result, used_env = _substitute(value, environ, key, where, problems)
            if used_env:
                templates[key] = value
            return result
        return value

    return walk(data, path), templates, problems


def _substitute(
    text: str, environ: Mapping[str, str], key: str, where: dict[str, str], problems: list[Problem]
) -> tuple[Any, bool]:
    used_env = False

    def replace(match: re.Match[str]) -> str:
        nonlocal used_env
        if match.group(1):  # `$${...}` stays as the literal `${...}`
            return match.group(0)[1:]
        name, sep, default = match.group(2).partition(",")
        name = name.strip()
        if not _NAME.fullmatch(name):
            problems.append(
                Problem(
                    key,
                    f"'${{{match.group(2)}}}' is not a valid reference; write ${{VAR}} or ${{VAR,default}}",
                    locate(where, key),
                )
            )
            return match.group(0)
        if name in environ:
            used_env = True
            return environ[name]
        if sep:
            return default.strip()
        problems.append(
            Problem(
                key,
                f"environment variable {name} is not set; export it or give a default as ${{{name},default}}",
                locate(where, key),
            )
        )
        return match.group(0)

    whole = _PATTERN.fullmatch(text)
    result = _PATTERN.sub(replace, text)
    if whole and not whole.group(1):
        return parse_value(result), used_env  # `lr: ${LR,1e-4}` is a float, not a string
    return result, used_env
