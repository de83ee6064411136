"""Load a model config (path, dict or PretrainedConfig) and check it names a causal LM."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import transformers
from transformers import AutoConfig, PretrainedConfig

from ..config import UserError

CONFIG_NAME = "config.json"


def looks_like_local_path(name: str | os.PathLike[str]) -> bool:
    """True when a model name is clearly a filesystem path rather than a Hub repo id."""
    text = os.fspath(name)
    return (
        os.path.isabs(text)
        or text.startswith(("./", "../", "~", ".\\"))
        or text.endswith(".json")
        or text.count("/") > 1
        or os.path.exists(text)
    )


def load_model_config(
    config: str | os.PathLike[str] | Mapping[str, Any] | PretrainedConfig,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
    **overrides: Any,
) -> PretrainedConfig:
    """A fresh PretrainedConfig from a config.json path, its directory, a Hub id, a dict or a config.

    `overrides` replace config attributes (e.g. `num_hidden_layers=2`); the input is never mutated.
    """
    if isinstance(config, PretrainedConfig):
        result = copy.deepcopy(config)
    elif isinstance(config, Mapping):
        result = _from_dict(dict(config))
    elif isinstance(config, str | os.PathLike):
        result = _from_path(config, trust_remote_code, revision)
    else:
        raise UserError(
            "a model config must be a path to config.json (or its directory), a dict or a "
            f"transformers PretrainedConfig, got {type(config).__name__}"
        )
    for key, value in overrides.items():
        setattr(result, key, value)
    return result


def _from_dict(data: dict[str, Any]) -> PretrainedConfig:
    model_type = data.pop("model_type", None)
    if not model_type:
        raise UserError(
            "a model config given as a dict needs a 'model_type' (e.g. 'llama', 'qwen3', 'gpt2')"
        )
    try:
        return AutoConfig.for_model(model_type, **data)
    except ValueError as e:
        raise UserError(f"unknown model_type {model_type!r} in the model config: {e}") from e


def _from_path(
    path: str | os.PathLike[str], trust_remote_code: bool, revision: str | None
) -> PretrainedConfig:
    text = os.path.expanduser(os.fspath(path))
    local = Path(text)
    if looks_like_local_path(text):
        if not local.exists():
            raise UserError(f"model config not found: '{text}' does not exist")
        if local.is_dir() and not (local / CONFIG_NAME).is_file():
            raise UserError(f"model config not found: '{text}' has no {CONFIG_NAME}")
    try:
        return AutoConfig.from_pretrained(
            text, trust_remote_code=trust_remote_code, revision=revision
        )
    except (OSError, ValueError) as e:
        raise UserError(f"could not load the model config from '{text}': {e}") from e


def check_causal_lm(config: PretrainedConfig) -> None:
    """Raise a UserError unless AutoModelForCausalLM can build a model for this config."""
    check_auto_class(config, "AutoModelForCausalLM", "causal language model")


def check_auto_class(config: PretrainedConfig, auto_class: str, kind: str) -> None:
    """Raise a UserError unless transformers' `auto_class` can build a model for this config."""
    if type(config) in getattr(transformers, auto_class)._model_mapping:
        return
    if auto_class in (getattr(config, "auto_map", None) or {}):
        return
    model_type = getattr(config, "model_type", None) or type(config).__name__
    raise UserError(
        f"model_type '{model_type}' is not a{'n' if kind[0] in 'aeiou' else ''} {kind}: "
        f"transformers' {auto_class} does not support it (config class {type(config).__name__})"
    )
