"""NeMo AutoModel configs, read as they are: their `_target_` paths and key names in ours.

A config looks like one of theirs when it names a `nemo_automodel.*` target (or `*_fn`) or has a
top-level `recipe:` key. `translate` rewrites such data into our spelling before validation,
keeping for every key it moves the place it came from in the user's file, so errors still
point there. `TARGET_ALIASES` is the one table of their targets and ours (docs/migrating.md
prints it); `resolve_target` consults it for any `nemo_automodel.*` path, so no package of that
name is ever imported. What we cannot honour is a ConfigError naming the option and what to
use instead; what we drop is a note, and only where dropping it cannot change the losses.

The pieces: `_aliases` (the target table, `alias_for`, `their_arguments`, `looks_like_nemo`),
`_keys` (their section keys: renames, drops, known names), `_translate` (`translate`, run as
passes: `_translate_retrieval` (with `_translate_retrieval_data`) first, for their retrieval
model classes, collators, datasets, `temperature` and `mining:` keys, whose settings are our
`bi_encoder:` / `cross_encoder:` / `mining:` sections; `_translate_targets` for targets and their arguments,
`_translate_sections` for top-level keys and sections, `_translate_features` for `fp8:`,
`quantization:` and `wandb.enable`, over the state in `_translator_base`) and `_migrate`
(`automodel migrate`).
"""

from __future__ import annotations

from ._aliases import (
    NEMO_PREFIX,
    NOT_SUPPORTED,
    RECIPES,
    TARGET_ALIASES,
    TARGET_KEY,
    Alias,
    alias_for,
    looks_like_nemo,
    their_arguments,
)
from ._keys import KEY_DROPS, KEY_RENAMES
from ._migrate import migrate, migrated_yaml
from ._translate import Translation, translate

__all__ = [
    "KEY_DROPS",
    "KEY_RENAMES",
    "NEMO_PREFIX",
    "NOT_SUPPORTED",
    "RECIPES",
    "TARGET_ALIASES",
    "TARGET_KEY",
    "Alias",
    "Translation",
    "alias_for",
    "looks_like_nemo",
    "migrate",
    "migrated_yaml",
    "their_arguments",
    "translate",
]
