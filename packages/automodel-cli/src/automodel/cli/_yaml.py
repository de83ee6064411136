"""The CLI's copy of automodel.core.config's YAML value typing (the CLI may not import core).

Same behaviour as automodel/core/config/_yaml.py (`_Loader`, `parse_value`): PyYAML's safe
typing plus YAML 1.2 style floats such as `1e-4`. tests/cli/test_yaml_typing.py parses one
corpus with both and asserts identical results; change them together.
Imported lazily: only runs with a slurm section read YAML in the CLI.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` and `1.0e5` as floats (YAML 1.2 style) and keeps keys as written."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Keys are names: a plain key is kept as written, so `on:` is "on", not True."""
        self.flatten_mapping(node)
        return {_key(self, k): self.construct_object(v, deep=deep) for k, v in node.value}


# PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent; users write 1e-4.
Loader.add_implicit_resolver(
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
    """Type a command-line value the way the config loader would (`1e-4`, `true`, `[1,2]`)."""
    if text.strip().lower() in ("none", "null", "~"):
        return None
    try:
        return yaml.load(text, Loader=Loader) if text.strip() else text
    except yaml.YAMLError:
        return text
