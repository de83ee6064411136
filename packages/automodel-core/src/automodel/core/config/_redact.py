"""Redaction of secrets and environment-derived values whenever a config is shown or saved."""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any

from ._yaml import dump_yaml

if TYPE_CHECKING:
    from ._node import ConfigNode

REDACTED = "<redacted>"

_SECRET_WORDS = {"password", "passwd", "secret", "secrets", "credential", "credentials", "apikey"}
# Tokenizer settings such as `pad_token: "<pad>"` are not secrets.
_SPECIAL_TOKENS = {
    "pad",
    "bos",
    "eos",
    "unk",
    "sep",
    "cls",
    "mask",
    "image",
    "audio",
    "video",
    "chat",
}


def is_secret_key(key: str) -> bool:
    """True for key names that usually hold credentials (hf_token, api_key, db_password, ...)."""
    words = [w for w in re.split(r"[_\-.\s]+|(?<=[a-z])(?=[A-Z])", key) if w]
    words = [w.lower() for w in words]
    if not words:
        return False
    if _SECRET_WORDS.intersection(words):
        return True
    if words[-1] == "key":
        return True
    return words[-1] == "token" and not (len(words) == 2 and words[0] in _SPECIAL_TOKENS)


def redacted_data(node: ConfigNode) -> dict[str, Any]:
    """Plain data of a node with secrets replaced and env-derived values shown as `${VAR}`."""
    templates = node.config_meta.env_templates
    prefix = f"{node.key_path}." if node.key_path else ""

    def walk(value: Any, key: str, name: str) -> Any:
        full = prefix + key
        if full in templates:
            return templates[full]
        if isinstance(value, dict):
            return {k: walk(v, f"{key}.{k}" if key else k, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{key}.{i}", name) for i, v in enumerate(value)]
        if value is not None and is_secret_key(name):
            return REDACTED
        return value

    return walk(copy.deepcopy(node._data), "", "")


def redacted_yaml(node: ConfigNode) -> str:
    """YAML text of a node, safe to print or write next to a checkpoint."""
    return dump_yaml(redacted_data(node))
