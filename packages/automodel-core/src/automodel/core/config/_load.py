"""Loading a config: YAML file, then overrides, then environment interpolation."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .._atomic import write_atomic
from ._errors import ConfigError, Problem
from ._interpolate import interpolate
from ._nemo_compat import looks_like_nemo, translate
from ._node import ConfigMeta, ConfigNode
from ._overrides import Override, apply_overrides, parse_overrides
from ._redact import redacted_yaml
from ._validate import Section, section_schema
from ._yaml import load_yaml_file


def load_config(
    path: str | Path,
    overrides: Sequence[str] | Sequence[Override] = (),
    *,
    allowed_imports: Iterable[str] = (),
    trust_remote_code: bool = False,
    environ: Mapping[str, str] | None = None,
    sections: Mapping[str, Section] | None = None,
) -> ConfigNode:
    """Load a YAML config, apply command-line overrides and resolve `${VAR}` references.

    `allowed_imports` and `trust_remote_code` are the caller's grants (the command line's): the
    config's own `allowed_imports:` key only says what it needs, and grants nothing.
    With the recipe's `sections`, an override may set any key their schemas accept even where
    the file does not spell it out (`--checkpoint.restore_from latest`); without them, or
    outside any schema, a new key needs `--+key`. A NeMo AutoModel config (their `recipe:` key
    or `nemo_automodel.*` targets) is read in our spelling, its overrides in either.
    """
    data, lines = load_yaml_file(path)
    where = {key: f"{path}:{line}" for key, line in lines.items()}
    if all(isinstance(o, Override) for o in overrides):
        parsed = list(overrides)
    else:
        parsed = parse_overrides([str(o) for o in overrides])
    schema = section_schema(sections, allowed_imports) if sections is not None else None
    for key, source in apply_overrides(data, parsed, schema).items():
        parts = key.split(".")
        for depth in range(1, len(parts)):
            where.setdefault(".".join(parts[:depth]), source)  # sections an override created
        where[key] = source
    if looks_like_nemo(data):  # a NeMo AutoModel config: read in our spelling (docs/migrating.md)
        translation = translate(data, where, str(path))
        data, where = translation.data, translation.where
        if (environ or os.environ).get("RANK", "0") == "0":
            for note in translation.notes:
                print(f"note: {note}", file=sys.stderr)
    data, templates, problems = interpolate(data, os.environ if environ is None else environ, where)
    if problems:
        raise ConfigError(problems)
    requested = data.get("allowed_imports") or []
    if not isinstance(requested, list) or not all(isinstance(m, str) for m in requested):
        raise ConfigError(
            Problem(
                "allowed_imports",
                "must be a list of module names such as [my_package]",
                where.get("allowed_imports", str(path)),
            )
        )
    meta = ConfigMeta(
        file=str(path),
        where=where,
        env_templates=templates,
        allowed_imports=tuple(allowed_imports),
        requested_imports=tuple(requested),
        trust_remote_code=trust_remote_code,
    )
    return ConfigNode(data, meta=meta)


def save_config(cfg: ConfigNode, path: str | Path) -> None:
    """Write the config as redacted YAML, atomically (a reader never sees a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_text(redacted_yaml(cfg), encoding="utf-8"))
