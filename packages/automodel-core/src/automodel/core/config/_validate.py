"""Checks a config against a recipe's sections and its targets' signatures, before anything heavy."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError, Problem, did_you_mean
from ._nemo_compat import their_arguments
from ._node import ConfigNode
from ._overrides import Accepted, Schema
from ._targets import TARGET_KEY, resolve_target
from ._trust import (
    ALLOW_ENV,
    ALLOW_FLAG,
    grant_pattern,
    matches,
    remote_code_problems,
)

# Top-level keys every recipe accepts without reading them: `allowed_imports` (what the config
# needs trusted, checked here against the command line's grants) and `slurm` (the `automodel`
# CLI's SLURM launch settings, see docs/cli.md).
RESERVED_KEYS = ("allowed_imports", "slurm")


@dataclass(frozen=True)
class Section:
    """How a recipe reads one top-level section of its config."""

    required: bool = False
    needs_target: bool = False  # the section must name a `_target_` to build
    keys_of: Callable[..., Any] | None = None  # without `_target_`, keys bind to this callable
    provided: tuple[str, ...] = ()  # arguments the recipe passes itself when it builds the section


def validate_config(cfg: ConfigNode, sections: Mapping[str, Section]) -> None:
    """Raise one ConfigError listing every unknown section, unresolvable target and unknown argument."""
    problems = _trust_problems(cfg)
    allowed = cfg.config_meta.allowed_imports
    for name in cfg:
        if name in RESERVED_KEYS:
            continue
        if name not in sections:
            hint = did_you_mean(name, sections)
            known = ", ".join(sorted(sections))
            problems.append(
                Problem(name, f"unknown section{hint}; this recipe reads: {known}", cfg.where(name))
            )
    for name, section in sections.items():
        value = cfg.get(name)
        if value is None:
            if section.required:
                problems.append(Problem(name, "required section is missing", cfg.config_meta.file))
            continue
        if not isinstance(value, ConfigNode):
            if section.needs_target or section.keys_of:
                problems.append(
                    Problem(name, f"must be a mapping, got {type(value).__name__}", cfg.where(name))
                )
            continue
        if TARGET_KEY not in value and section.needs_target:
            problems.append(
                Problem(name, f"needs a {TARGET_KEY} naming what to build", cfg.where(name))
            )
        if TARGET_KEY not in value and section.keys_of is not None:
            _bind(
                section.keys_of,
                value,
                cfg,
                problems,
                section.provided,
                check_required=True,
                label=name,
            )
        _walk(value, cfg, problems, allowed, section.provided, top=True)
    if problems:
        raise ConfigError(problems)


def _trust_problems(cfg: ConfigNode) -> list[Problem]:
    """What the config asks to be trusted with that the command line did not grant."""
    meta = cfg.config_meta
    grants = [grant_pattern(g) for g in meta.allowed_imports]
    missing = [r for r in meta.requested_imports if not any(matches(g, r) for g in grants)]
    problems = []
    if missing:
        flags = " ".join(f"{ALLOW_FLAG} {m}" for m in missing)
        problems.append(
            Problem(
                "allowed_imports",
                f"the config asks to trust {', '.join(missing)}, but a config cannot extend its "
                f"own allow-list. If you trust it, pass {flags} on the command line (or list it "
                f"in {ALLOW_ENV})",
                cfg.where("allowed_imports"),
            )
        )
    return problems + remote_code_problems(cfg.to_dict(), meta)


def _walk(
    node: Any,
    cfg: ConfigNode,
    problems: list[Problem],
    allowed: tuple[str, ...],
    provided: tuple[str, ...],
    top: bool,
) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, cfg, problems, allowed, (), top=False)
        return
    if not isinstance(node, ConfigNode):
        return
    if TARGET_KEY in node:
        key = f"{node.key_path}.{TARGET_KEY}"
        try:
            fn = resolve_target(node[TARGET_KEY], allowed, key=key, where=cfg.where(key))
        except ConfigError as e:
            problems.extend(e.problems)
        else:
            _bind(fn, node, cfg, problems, provided, check_required=top, label=node[TARGET_KEY])
    for key, value in node.items():
        full = f"{node.key_path}.{key}"
        if key.endswith("_fn") and isinstance(value, str):
            try:
                resolve_target(value, allowed, key=full, where=cfg.where(full))
            except ConfigError as e:
                problems.extend(e.problems)
        elif key != TARGET_KEY:
            _walk(value, cfg, problems, allowed, (), top=False)


def _bind(
    fn: Callable[..., Any],
    node: ConfigNode,
    cfg: ConfigNode,
    problems: list[Problem],
    provided: tuple[str, ...],
    check_required: bool,
    label: str,
) -> None:
    accepted = _accepted(fn)
    if accepted is None:
        return  # some builtins expose no signature; they are checked when called
    params = inspect.signature(fn).parameters
    kinds = inspect.Parameter
    given = [k for k in node if k != TARGET_KEY]
    if not accepted.open:
        for key in given:
            if key not in accepted.names and not _config_converts(fn, key, node[key]):
                full = f"{node.key_path}.{key}"
                hint = did_you_mean(key, sorted(accepted.names))
                problems.append(
                    Problem(full, f"{label} takes no argument '{key}'{hint}", cfg.where(full))
                )
    if check_required:
        for name, p in params.items():
            if (
                p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
                and p.default is p.empty
                and name not in given
                and name not in provided
            ):
                if name in ("self", "cls"):
                    continue
                problems.append(
                    Problem(
                        node.key_path,
                        f"{label} needs the argument '{name}', which is missing",
                        cfg.where(node.key_path),
                    )
                )


def section_schema(sections: Mapping[str, Section], allowed: Iterable[str] = ()) -> Schema:
    """What overrides may set without `--+`: a section's fields (`keys_of`, when it names no
    `_target_`) or the named parameters of the `_target_` at that place."""

    def keys(data: dict[str, Any], parent: list[str]) -> Accepted | None:
        section = sections.get(parent[0]) if parent else None
        if section is None:
            return None
        node: Any = data
        for part in parent:
            node = node.get(part) if isinstance(node, dict) else None
        node = {} if node is None else node
        if not isinstance(node, dict):
            return None
        if TARGET_KEY in node:
            try:
                fn = resolve_target(str(node[TARGET_KEY]), allowed)
            except ConfigError:
                return None  # validation reports the target itself
        elif len(parent) == 1 and section.keys_of is not None:
            fn = section.keys_of
        else:
            return None
        accepted = _accepted(fn)
        if accepted is not None and TARGET_KEY in node:  # a NeMo AutoModel target: theirs too
            accepted = Accepted(
                accepted.names | their_arguments(str(node[TARGET_KEY])), accepted.open
            )
        if accepted is None or len(parent) > 1:
            return accepted
        return Accepted(accepted.names - set(section.provided), accepted.open)

    return keys


# keys a transformers config class still takes, outside its signature: the older spelling of
# `rope_parameters`, which it converts
_LEGACY_CONFIG_KEYS = frozenset({"rope_theta", "rope_scaling"})


def _config_converts(fn: Callable[..., Any], key: str, value: Any) -> bool:
    """Whether `fn`, a transformers config class, turns `key` (outside its signature) into its
    declared fields, as it does older spellings (`partial_rotary_factor` into
    `rope_parameters`). A key it only keeps as a loose attribute, never read, is not."""
    if not any(c.__name__ == "PreTrainedConfig" for c in getattr(fn, "__mro__", ())):
        return False
    plain = value.to_dict() if hasattr(value, "to_dict") else value
    try:
        default, given = fn().to_dict(), fn(**{key: plain}).to_dict()
    except Exception:  # the class refused the value: not a spelling it converts
        return False
    default.pop(key, None)
    given.pop(key, None)
    return given != default


def _accepted(fn: Callable[..., Any]) -> Accepted | None:
    """The keyword names `fn` takes, or None when it has no signature."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    kinds = inspect.Parameter
    named = (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
    names = frozenset(n for n, p in params.items() if p.kind in named and n not in ("self", "cls"))
    if any(c.__name__ == "PreTrainedConfig" for c in getattr(fn, "__mro__", ())):
        names |= _LEGACY_CONFIG_KEYS
    return Accepted(names, any(p.kind is kinds.VAR_KEYWORD for p in params.values()))
