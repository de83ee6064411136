"""Command-line overrides: `--a.b v`, `--a.b=v`, `--+a.b v` (add a key), `--~a.b` (delete a key)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import ConfigError, Problem, did_you_mean
from ._node import split_path
from ._yaml import parse_value

_ADD_HINT = "to add a new key write --+{key} VALUE"


@dataclass(frozen=True)
class Accepted:
    """The keys a schema names at one place of a config; `open`: it takes others too (`**kwargs`)."""

    names: frozenset[str]
    open: bool = False


# What a schema accepts below a dotted path of the config data, or None where no schema covers
# that place (then only `--+` adds a key there).
Schema = Callable[[dict[str, Any], list[str]], Accepted | None]


@dataclass(frozen=True)
class Override:
    """One parsed override: what to do, to which dotted key, with which typed value."""

    op: Literal["set", "add", "delete"]
    key: str
    value: Any = None
    text: str = ""


def parse_overrides(args: Sequence[str]) -> list[Override]:
    """Parse override arguments; every malformed one is reported at once."""
    overrides: list[Override] = []
    problems: list[Problem] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--") or len(arg) == 2:
            problems.append(
                Problem(
                    "",
                    f"unexpected argument {arg!r}; overrides look like --section.key VALUE",
                    "command line",
                )
            )
            continue
        body = arg[2:]
        op: Literal["set", "add", "delete"] = "set"
        if body[0] in "+~":
            op = "add" if body[0] == "+" else "delete"
            body = body[1:]
        key, eq, raw = body.partition("=")
        if not key or any(not part for part in split_path(key)):
            problems.append(
                Problem(
                    "", f"{arg!r} does not name a key; write --section.key VALUE", "command line"
                )
            )
            continue
        if op == "delete":
            if eq:
                problems.append(
                    Problem(
                        key, f"{arg!r}: a deletion takes no value; write --~{key}", "command line"
                    )
                )
            else:
                overrides.append(Override("delete", key, text=arg))
            continue
        if not eq:
            if i >= len(args) or (args[i].startswith("--") and len(args[i]) > 2):
                problems.append(
                    Problem(
                        key, f"{arg} needs a value: --{key} VALUE or --{key}=VALUE", "command line"
                    )
                )
                continue
            raw = args[i]
            i += 1
        overrides.append(
            Override(op, key, parse_value(raw), text=f"{arg}={raw}" if not eq else arg)
        )
    if problems:
        raise ConfigError(problems)
    return overrides


def apply_overrides(
    data: dict[str, Any], overrides: Sequence[Override], schema: Schema | None = None
) -> dict[str, str]:
    """Apply overrides to raw config data in order; return where each changed key came from.

    `--key v` of a key the file does not spell out is added when `schema` accepts its name
    there (a field of the section, a parameter of its `_target_`); anywhere else it is an
    error naming the closest valid key, and `--+key v` adds it.
    """
    where: dict[str, str] = {}
    problems: list[Problem] = []
    for override in overrides:
        problem = _apply_one(data, override, schema)
        if problem:
            problems.append(problem)
        else:
            where[override.key] = f"command line ({override.text})"
    if problems:
        raise ConfigError(problems)
    return where


def _apply_one(data: dict[str, Any], ov: Override, schema: Schema | None) -> Problem | None:
    parts = split_path(ov.key)
    if ov.op == "set" and schema is not None and _absent(data, parts):
        accepted = schema(data, parts[:-1])
        if accepted is not None and parts[-1] in accepted.names:
            ov = Override("add", ov.key, ov.value, ov.text)  # a key the schema names
        elif accepted is not None:
            return _not_accepted(ov, parts, data, accepted)
    parent: Any = data
    for depth, part in enumerate(parts[:-1]):
        child = _child(parent, part)
        if child is None and ov.op == "add" and isinstance(parent, dict):
            child = parent[part] = {}
        if not isinstance(child, dict | list):
            return _missing(ov, parts[: depth + 1], parent, child)
        parent = child
    last = parts[-1]
    if isinstance(parent, list):
        if not _is_index(last, parent):
            return Problem(
                ov.key, f"'{last}' is not an index of the {len(parent)}-item list", "command line"
            )
        if ov.op == "delete":
            del parent[int(last)]
        else:
            parent[int(last)] = ov.value
        return None
    if ov.op == "add":
        parent[last] = ov.value
        return None
    if last not in parent:
        return _missing(ov, parts, parent, None)
    if ov.op == "delete":
        del parent[last]
    else:
        parent[last] = ov.value
    return None


def _child(parent: Any, part: str) -> Any:
    if isinstance(parent, dict):
        return parent.get(part)
    if isinstance(parent, list) and _is_index(part, parent):
        return parent[int(part)]
    return None


def _is_index(part: str, seq: list[Any]) -> bool:
    return part.lstrip("-").isdigit() and -len(seq) <= int(part) < len(seq)


def _absent(data: dict[str, Any], parts: list[str]) -> bool:
    """Whether the last key is missing below parents that are mappings, missing or null (a
    list or a scalar in the way is `_missing`'s to report)."""
    node: Any = data
    for part in parts:
        if node is None:
            return True
        if not isinstance(node, dict):
            return False
        if part not in node:
            return True
        node = node[part]
    return False


def _not_accepted(
    ov: Override, parts: list[str], data: dict[str, Any], accepted: Accepted
) -> Problem:
    node: Any = data
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    names = sorted({*accepted.names, *(node or {})} - {"_target_"})
    prefix = ".".join(parts[:-1])
    hint = did_you_mean(parts[-1], names, prefix=f"{prefix}.")
    listed = ", ".join(names) if len(names) <= 12 else ", ".join(names[:12]) + ", ..."
    message = f"'{prefix}' has no key '{parts[-1]}'{hint}; it takes: {listed}"
    if accepted.open:  # the target takes **kwargs: a new name may be meant
        message += "; " + _ADD_HINT.format(key=ov.key)
    return Problem(ov.key, message, "command line")


def _missing(ov: Override, parts: list[str], parent: Any, child: Any) -> Problem:
    key = ".".join(parts)
    if child is not None or (isinstance(parent, dict) and parts[-1] in parent):
        kind = type(child).__name__ if child is not None else "null"
        return Problem(
            ov.key, f"cannot set a key below '{key}', which holds a {kind} value", "command line"
        )
    siblings = parent.keys() if isinstance(parent, dict) else []
    prefix = ".".join(parts[:-1])
    hint = did_you_mean(parts[-1], siblings, prefix=f"{prefix}." if prefix else "")
    extra = "" if ov.op == "delete" else "; " + _ADD_HINT.format(key=ov.key)
    return Problem(ov.key, f"no key '{key}' in the config{hint}{extra}", "command line")
