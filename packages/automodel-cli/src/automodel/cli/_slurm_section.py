"""Reading the config's `slurm:` section (and where each key is) and `--slurm.*` overrides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automodel.cli._errors import UsageError
from automodel.cli._slurm_job import SECTION

if TYPE_CHECKING:
    import yaml


@dataclass(frozen=True)
class _Override:
    op: str  # "set", "add" or "delete"
    key: str
    raw: str | None
    token: str


def split_overrides(tokens: list[str]) -> tuple[list[_Override], list[_Override], list[str]]:
    """Split overrides (the grammar of automodel.core.config) into slurm ones and the rest.

    Returns the `slurm` overrides, the others (parsed, to find logging.run_dir), and the
    tokens of the others in their order (what the recipe gets).
    """
    mine: list[_Override] = []
    others: list[_Override] = []
    rest: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--") or len(token) == 2:
            rest.append(token)  # the recipe reports it
            continue
        body = token[2:]
        op = {"+": "add", "~": "delete"}.get(body[0], "set")
        body = body[1:] if op != "set" else body
        key, eq, raw = body.partition("=")
        used = [token]
        value: str | None = raw if eq else None
        takes_value = op != "delete" and not eq and i < len(tokens)
        if takes_value and not (tokens[i].startswith("--") and len(tokens[i]) > 2):
            value = tokens[i]
            used.append(tokens[i])
            i += 1
        override = _Override(op, key, value, "=".join(used) if len(used) == 2 else token)
        if key == SECTION or key.startswith(SECTION + "."):
            mine.append(override)
        else:
            others.append(override)
            rest += used
    return mine, others, rest


def mentions_slurm(config: str, overrides: list[str]) -> bool:
    """Cheap check before parsing YAML: could this run have a slurm section at all?"""
    mine, _, _ = split_overrides(overrides)
    if mine:
        return True
    try:
        return SECTION in Path(config).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False  # the recipe reports an unreadable config


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list"}.get(type(value), f"{value!r}")


def _read_yaml(config: str) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The config's data, `file:line` of the slurm and logging keys, their plain scalars as written."""
    try:
        text = Path(config).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {config!r}: {exc}.") from None
    import yaml  # only runs with a slurm section read YAML in the CLI

    from automodel.cli._yaml import Loader

    loader = Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{config}:{mark.line + 1}" if mark is not None else config
        reason = getattr(exc, "problem", None) or str(exc)
        raise UsageError(f"{where}: not valid YAML: {reason}.") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise UsageError(f"{config}: a config is a mapping of sections, got {_kind(data)}.")
    where: dict[str, str] = {}
    raw: dict[str, str] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in (SECTION, "logging"):
                where[key.value] = f"{config}:{key.start_mark.line + 1}"
                _walk(value, key.value, config, where, raw)
    return data, where, raw


def _walk(
    node: yaml.Node, path: str, file: str, where: dict[str, str], raw: dict[str, str]
) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                child = f"{path}.{key.value}"
                where[child] = f"{file}:{key.start_mark.line + 1}"
                _walk(value, child, file, where, raw)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}.{index}"
            where[child] = f"{file}:{item.start_mark.line + 1}"
            _walk(item, child, file, where, raw)
    elif isinstance(node, yaml.ScalarNode) and node.style is None:
        raw[path] = node.value  # `time: 4:00:00` stays a time, not YAML 1.1's base-60 14400


def _parse_value(text: str) -> Any:
    from automodel.cli._yaml import parse_value

    return parse_value(text)


def _apply(
    root: dict[str, Any],
    ov: _Override,
    where: dict[str, str],
    raw: dict[str, str],
    problems: list[str],
) -> None:
    """Apply one `--slurm...` override to {"slurm": section}, the way the recipe would."""
    source = f"command line ({ov.token})"
    parts = ov.key.split(".")
    if ov.op != "delete" and ov.raw is None:
        problems.append(f"{source}: {ov.key}: needs a value: --{ov.key} VALUE or --{ov.key}=VALUE")
        return
    if ov.op == "delete" and ov.raw is not None:
        problems.append(f"{source}: {ov.key}: a deletion takes no value; write --~{ov.key}")
        return
    parent: Any = root
    for depth, part in enumerate(parts[:-1]):
        child = parent.get(part)
        if child is None and ov.op == "add":
            child = parent[part] = {}
        if not isinstance(child, dict):
            shown = ".".join(parts[: depth + 1])
            problems.append(
                f"{source}: {ov.key}: {shown} is not a mapping in the config"
                + (f"; to add it write --+{ov.key} VALUE" if ov.op == "set" else "")
            )
            return
        parent = child
    last = parts[-1]
    if ov.op != "add" and last not in parent:
        hint = f"; to add it write --+{ov.key} VALUE" if ov.op == "set" else ""
        problems.append(f"{source}: {ov.key}: not in the config{hint}")
        return
    for key in [k for k in (*where, *raw) if k == ov.key or k.startswith(ov.key + ".")]:
        where.pop(key, None)
        raw.pop(key, None)
    if ov.op == "delete":
        del parent[last]
        return
    assert ov.raw is not None
    parent[last] = _parse_value(ov.raw)
    raw[ov.key] = ov.raw
    where[ov.key] = source


def _logging_run_dir(
    data: dict[str, Any], others: list[_Override], where: dict[str, str], raw: dict[str, str]
) -> tuple[str | None, str]:
    """logging.run_dir after the overrides (as written) and where it comes from."""
    logging = data.get("logging")
    value = logging.get("run_dir") if isinstance(logging, dict) else None
    text = None if value is None else raw.get("logging.run_dir", str(value))
    source = where.get("logging.run_dir", "")
    for ov in others:
        if ov.key == "logging.run_dir":
            text = None if ov.op == "delete" else ov.raw
        elif ov.key == "logging":
            parsed = None if ov.op == "delete" or ov.raw is None else _parse_value(ov.raw)
            run_dir = parsed.get("run_dir") if isinstance(parsed, dict) else None
            text = None if run_dir is None else str(run_dir)
        else:
            continue
        source = f"command line ({ov.token})"
    return text, source
