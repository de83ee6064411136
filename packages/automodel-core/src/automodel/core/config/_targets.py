"""The one `_target_` resolver of the project: allow-listed imports and object construction."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any

from ._errors import ConfigError, Problem, did_you_mean
from ._nemo_compat import NEMO_PREFIX, alias_for
from ._node import ConfigMeta, ConfigNode, locate
from ._trust import (
    ALLOW_FLAG,
    ALLOW_LIST_DOC,
    canonical_name,
    judge,
    remote_code_problems,
)

TARGET_KEY = "_target_"


class TargetError(ConfigError):
    """A `_target_` (or `*_fn` value) that cannot be imported or is not allowed."""


def resolve_target(
    path: str, allowed_imports: Iterable[str] = (), *, key: str = "", where: str = ""
) -> Callable[..., Any]:
    """Import the callable a dotted path names, if a config may call it (see `_trust`).

    `allowed_imports` are the user's grants (`--allow-import`): module prefixes or exact names.
    A NeMo AutoModel path (`nemo_automodel.*`) resolves through the alias table of
    `_nemo_compat` to ours, never by importing a package of that name.
    """
    if isinstance(path, str) and path.startswith(NEMO_PREFIX):
        path = alias_for(path, key=key, where=where)

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
    granted = tuple(allowed_imports)  # a grant of exactly `path` also covers where it is defined
    verdict = judge(path, granted)
    if verdict.refused_because is not None:
        raise fail(_refused(path, path, verdict.refused_because))
    if not verdict.allowed:
        raise fail(
            f"'{path}' is not something a config may call: the allow-list names optimizers, LR "
            "schedulers, nn modules and losses, data classes, model/tokenizer/processor classes "
            f"and automodel's builders ({ALLOW_LIST_DOC}). If you trust this config, allow it "
            f"on the command line: {ALLOW_FLAG} {path}"
            + (f" (or its package: {ALLOW_FLAG} {parts[0]})" if len(parts) > 1 else "")
        )
    obj = _import(parts, fail)
    canonical = canonical_name(obj)
    if canonical is not None and canonical != path and path not in granted:
        verdict = judge(canonical, granted)
        if verdict.refused_because is not None:
            raise fail(_refused(path, canonical, verdict.refused_because))
        if canonical.split(".")[0] != parts[0] and not verdict.allowed:
            raise fail(
                f"'{path}' is {canonical}, which a config may not call; name it by its own path "
                f"and, if you trust it, {ALLOW_FLAG} {canonical}"
            )
    if not callable(obj):
        raise fail(f"'{path}' is a {type(obj).__name__}, not something that can be called")
    return obj


def _refused(path: str, canonical: str, why: str) -> str:
    shown = f"'{path}'" if canonical == path else f"'{path}' (that is '{canonical}')"
    return (
        f"{shown} is refused: it {why}. A config cannot ask for it; if you trust this "
        f"config, allow exactly this on the command line: {ALLOW_FLAG} {canonical}"
    )


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
        reached = ".".join(parts[: depth + 1])
        if isinstance(obj, ModuleType) and obj.__name__ != reached:
            # `torch.nn.functional.torch.hub.load` would reach torch.hub past the allow-list
            raise fail(
                f"'{'.'.join(parts)}' reaches the module '{obj.__name__}' under another name "
                f"('{reached}'); name it by its own path"
            )
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
    refused = remote_code_problems(data, meta, path)
    if refused:
        raise ConfigError(refused)
    kwargs = {
        k: _build_key(k, v, f"{path}.{k}" if path else k, meta)
        for k, v in data.items()
        if k != TARGET_KEY
    }
    kwargs.update(extra)  # the recipe's own arguments, not the config's
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
