"""YAML reading with exact floats, duplicate-key detection and line numbers per key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ._errors import ConfigError, Problem


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` and `1.0e5` as floats (YAML 1.2 style) and keeps keys as written."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Keys are names: a plain key is kept as written, so `on:` is "on", not True."""
        self.flatten_mapping(node)
        return {_key(self, k): self.construct_object(v, deep=deep) for k, v in node.value}


# PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent; users write 1e-4.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+)$"),
    list("-+0123456789"),
)


def _key(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    """A mapping key is a name, as written (`on`, `1e-4`, `null` stay strings)."""
    if isinstance(node, yaml.ScalarNode):
        return node.value
    return str(loader.construct_object(node, deep=True))


def parse_value(text: str) -> Any:
    """Type a command-line or environment value the way YAML would (`1e-4`, `true`, `[1,2]`)."""
    if text.strip().lower() in ("none", "null", "~"):
        return None
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else text
    except yaml.YAMLError:
        return text


def dump_yaml(data: Any) -> str:
    """Serialise plain data to block-style YAML, keeping key order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def load_yaml_file(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML mapping; return it and the line number of every dotted key path."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        lines: dict[str, int] = {}
        data = _build(loader, root, "", lines, str(path)) if root is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        reason = getattr(e, "problem", None) or str(e)
        raise ConfigError(Problem("", f"not valid YAML: {reason}", where)) from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError(f"config file {path} is empty")
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections, not a {type(data).__name__}"
        )
    return data, lines


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _build(loader: _Loader, node: yaml.Node, prefix: str, lines: dict[str, int], file: str) -> Any:
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
        where = f"{file}:{node.start_mark.line + 1}"
        message = f"not valid YAML: the tag {node.tag} is not supported; a config is plain data"
        raise ConfigError(Problem(prefix, message, where))
    if isinstance(node, yaml.MappingNode):
        own = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
        loader.flatten_mapping(node)  # resolves `<<: *anchor`; merged keys come first
        out: dict[str, Any] = {}
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = _key(loader, key_node)
            path = f"{prefix}.{key}" if prefix else key
            if id(key_node) in own:
                if key in seen:
                    line = key_node.start_mark.line + 1
                    message = f"duplicate key (first defined at line {lines.get(path, '?')})"
                    raise ConfigError(Problem(path, message, f"{file}:{line}"))
                seen.add(key)
            lines[path] = key_node.start_mark.line + 1
            out[key] = _build(loader, value_node, path, lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            path = f"{prefix}.{i}"
            lines[path] = item.start_mark.line + 1
            items.append(_build(loader, item, path, lines, file))
        return items
    return loader.construct_object(node, deep=True)
