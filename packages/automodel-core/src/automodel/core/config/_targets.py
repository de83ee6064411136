"""The one `_target_` resolver of the project: allow-listed imports and object construction."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._errors import ConfigError, Problem, did_you_mean
from ._node import ConfigMeta, ConfigNode, locate

DEFAULT_ALLOWED_IMPORTS: tuple[str, ...] = (
    "automodel",
    "torch",
    "transformers",
    "datasets",
    "torchdata",
    "safetensors",
)

TARGET_KEY = "_target_"


class TargetError(ConfigError):
    """A `_target_` (or `*_fn` value) that cannot be imported or is not allowed."""


def _allowed(path: str, allowed_imports: Iterable[str]) -> bool:
    return any(path == mod or path.startswith(mod + ".") for mod in allowed_imports)


def resolve_target(
    path: str, allowed_imports: Iterable[str] = (), *, key: str = "", where: str = ""
) -> Callable[..., Any]:
    """Import the callable named by a dotted path, if its module is allow-listed and public."""
    allowed = (*DEFAULT_ALLOWED_IMPORTS, *allowed_imports)

    def fail(message: str) -> TargetError:
        return TargetError(Problem(key, message, where))

    if not isinstance(path, str) or not path:
        raise fail(f"a target must be a dotted path such as 'torch.optim.AdamW', got {path!r}")
    parts = path.split(".")
    if any(not p.isidentifier() for p in parts):
        raise fail(f"'{path}' is not a dotted Python path such as 'torch.optim.AdamW'")
    private = [p for p in parts if p.startswith("_")]
    if private:
        raise fail(
            f"'{path}' reaches the private name '{private[0]}'; only public names can be targets"
        )
    if not _allowed(path, allowed):
        top = parts[0]
        raise fail(
            f"'{path}' is outside the allowed imports ({', '.join(allowed)}); if you trust it, add "
            f"`allowed_imports: [{top}]` at the top of the config or pass --allow-import {top}"
        )
    obj = _import(parts, fail)
    if not callable(obj):
        raise fail(f"'{path}' is a {type(obj).__name__}, not something that can be called")
    return obj


def _import(parts: list[str], fail: Callable[[str], TargetError]) -> Any:
    module = None
    for split in range(len(parts), 0, -1):
        name = ".".join(parts[:split])
        try:
            module = importlib.import_module(name)
            break
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise fail(f"importing '{name}' failed: {e}") from e
    if module is None:
        raise fail(f"no module named '{parts[0]}' is installed")
    obj: Any = module
    for depth in range(split, len(parts)):
        if not hasattr(obj, parts[depth]):
            owner = ".".join(parts[:depth])
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise fail(
                f"'{owner}' has no attribute '{parts[depth]}'{did_you_mean(parts[depth], names)}"
            )
        obj = getattr(obj, parts[depth])
    return obj


def instantiate(node: ConfigNode | Mapping[str, Any], /, **kwargs: Any) -> Any:
    """Build the object a `_target_` section describes; `kwargs` add or replace arguments."""
    if isinstance(node, ConfigNode):
        data, path, meta = node.to_dict(), node.key_path, node.config_meta
    else:
        data, path, meta = dict(node), "", ConfigMeta()
    if TARGET_KEY not in data:
        raise ConfigError(
            Problem(
                path,
                f"needs a {TARGET_KEY} naming what to build",
                locate(meta.where, path, meta.file),
            )
        )
    return _call(data, path, meta, kwargs)


def build_value(value: Any, path: str, meta: ConfigMeta) -> Any:
    """Turn config data into arguments: nested targets built, `*_fn` paths resolved."""
    if isinstance(value, dict):
        if TARGET_KEY in value:
            return _call(value, path, meta, {})
        return {k: _build_key(k, v, f"{path}.{k}" if path else k, meta) for k, v in value.items()}
    if isinstance(value, list):
        return [build_value(v, f"{path}.{i}", meta) for i, v in enumerate(value)]
    return value


def _build_key(name: str, value: Any, path: str, meta: ConfigMeta) -> Any:
    if name.endswith("_fn") and isinstance(value, str):
        return resolve_target(
            value, meta.allowed_imports, key=path, where=locate(meta.where, path, meta.file)
        )
    return build_value(value, path, meta)


def _call(data: dict[str, Any], path: str, meta: ConfigMeta, extra: dict[str, Any]) -> Any:
    target = data[TARGET_KEY]
    fn = resolve_target(
        target,
        meta.allowed_imports,
        key=f"{path}.{TARGET_KEY}" if path else TARGET_KEY,
        where=locate(meta.where, path, meta.file),
    )
    kwargs = {
        k: _build_key(k, v, f"{path}.{k}" if path else k, meta)
        for k, v in data.items()
        if k != TARGET_KEY
    }
    kwargs.update(extra)
    try:
        return fn(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            Problem(
                path,
                f"building {target} failed: {type(e).__name__}: {e}",
                locate(meta.where, path, meta.file),
            )
        ) from e
