"""ConfigNode: attribute and dotted-path access over a loaded config."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ._errors import did_you_mean

_MISSING = object()


@dataclass
class ConfigMeta:
    """Facts shared by every node of one config: where keys came from and what may be imported."""

    file: str = ""
    where: dict[str, str] = field(default_factory=dict)  # dotted key -> "file:line" or the override
    env_templates: dict[str, str] = field(default_factory=dict)  # dotted key -> "${VAR}" text
    allowed_imports: tuple[str, ...] = ()  # granted by the command line or the environment
    requested_imports: tuple[str, ...] = ()  # what the config's `allowed_imports:` asks for
    trust_remote_code: bool = False  # the command line allows code from model repositories


def locate(where: dict[str, str], key: str, default: str = "") -> str:
    """Where the nearest enclosing key of `key` was set, or `default`."""
    while key:
        if key in where:
            return where[key]
        key = key.rpartition(".")[0]
    return default


def split_path(path: str) -> list[str]:
    """Split a dotted key path into its parts."""
    return path.split(".") if path else []


def _step(value: Any, part: str) -> Any:
    if isinstance(value, dict):
        return value.get(part, _MISSING)
    if isinstance(value, list) and part.lstrip("-").isdigit():
        index = int(part)
        return value[index] if -len(value) <= index < len(value) else _MISSING
    return _MISSING


class ConfigNode:
    """A mapping section of a config: `cfg.optimizer.lr`, `cfg["optimizer.lr"]`, `cfg.get("a.b", 0)`.

    Keys that share a name with a method (`items`, `keys`, `get`, ...) are read with `cfg["items"]`.
    """

    __slots__ = ("_data", "_meta", "_path")

    def __init__(
        self, data: dict[str, Any] | None = None, *, path: str = "", meta: ConfigMeta | None = None
    ):
        object.__setattr__(self, "_data", {} if data is None else data)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_meta", meta if meta is not None else ConfigMeta())

    # -- reading -------------------------------------------------------------------------------
    def _wrap(self, value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return ConfigNode(value, path=path, meta=self._meta)
        if isinstance(value, list):
            return [self._wrap(v, f"{path}.{i}") for i, v in enumerate(value)]
        return value

    def _full(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _lookup(self, key: str) -> Any:
        value: Any = self._data
        for part in split_path(key):
            value = _step(value, part)
            if value is _MISSING:
                return _MISSING
        return self._wrap(value, self._full(key))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = self._data.get(name, _MISSING)
        if value is _MISSING:
            hint = did_you_mean(name, self._data)
            raise AttributeError(f"config has no key '{self._full(name)}'{hint}")
        return self._wrap(value, self._full(name))

    def __getitem__(self, key: str) -> Any:
        value = self._lookup(key)
        if value is _MISSING:
            raise KeyError(f"config has no key '{self._full(key)}'{did_you_mean(key, self._data)}")
        return value

    def get(self, key: str, default: Any = None) -> Any:
        """Value at a dotted key path below this node, or `default` when absent."""
        value = self._lookup(key)
        return default if value is _MISSING else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._lookup(key) is not _MISSING

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> list[str]:
        """Keys of this section, in file order."""
        return list(self._data)

    def items(self) -> list[tuple[str, Any]]:
        """(key, value) pairs of this section; nested sections come back as ConfigNodes."""
        return [(k, self._wrap(v, self._full(k))) for k, v in self._data.items()]

    def values(self) -> list[Any]:
        """Values of this section; nested sections come back as ConfigNodes."""
        return [v for _, v in self.items()]

    @property
    def key_path(self) -> str:
        """Dotted path of this node from the config root ('' for the root)."""
        return self._path

    @property
    def config_meta(self) -> ConfigMeta:
        """Facts shared by the whole config (source locations, allowed imports)."""
        return self._meta

    def where(self, key: str = "") -> str:
        """Where a key below this node was set: 'file.yaml:LINE', an override, or the file name."""
        return locate(self._meta.where, self._full(key) if key else self._path, self._meta.file)

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of this section as plain dicts and lists (secrets included)."""
        return copy.deepcopy(self._data)

    # -- writing -------------------------------------------------------------------------------
    def set(self, key: str, value: Any) -> None:
        """Set a dotted key below this node, creating missing intermediate sections."""
        parts = split_path(key)
        target = self._data
        for part in parts[:-1]:
            nxt = _step(target, part)
            if nxt is _MISSING or nxt is None:
                nxt = {}
                target[part] = nxt
            if not isinstance(nxt, dict | list):
                raise TypeError(
                    f"cannot set '{self._full(key)}': '{part}' holds a {type(nxt).__name__}"
                )
            target = nxt
        if isinstance(value, ConfigNode):
            value = value.to_dict()
        if isinstance(target, list):
            target[int(parts[-1])] = value
        else:
            target[parts[-1]] = value
        full = self._full(key)
        for templated in [
            k for k in self._meta.env_templates if k == full or k.startswith(full + ".")
        ]:
            del self._meta.env_templates[templated]

    def __setattr__(self, name: str, value: Any) -> None:
        self.set(name, value)

    # -- display -------------------------------------------------------------------------------
    def to_yaml(self) -> str:
        """This section as YAML with secrets and environment-derived values redacted."""
        from ._redact import redacted_yaml

        return redacted_yaml(self)

    def __repr__(self) -> str:
        return f"ConfigNode({self._path or '<root>'}):\n{self.to_yaml()}"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ConfigNode):
            return self._data == other._data
        if isinstance(other, dict):
            return self._data == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self._data, "path": self._path, "meta": self._meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "_data", state["data"])
        object.__setattr__(self, "_path", state["path"])
        object.__setattr__(self, "_meta", state["meta"])
