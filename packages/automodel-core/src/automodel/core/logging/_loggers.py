"""The metric loggers a config asks for in its `wandb:` and `mlflow:` sections."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from ..config import ConfigError, ConfigNode, Problem
from ._metric_logger import MetricLogger
from ._mlflow import MLFLOW_KEYS, MlflowLogger, check_mlflow_available
from ._wandb import WANDB_KEYS, WandbLogger, check_wandb_available

# Section name -> (its keys, the required ones with what they are).
_SECTIONS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "wandb": (WANDB_KEYS, {"project": "the W&B project name"}),
    "mlflow": (MLFLOW_KEYS, {}),
}


def check_metric_loggers(cfg: ConfigNode | Mapping[str, Any] | None) -> None:
    """Pre-flight check of the logger sections: valid keys, each tracker installed and usable."""
    sections = _sections(cfg)
    if "wandb" in sections:
        check_wandb_available()
    if "mlflow" in sections:
        check_mlflow_available(sections["mlflow"].get("tracking_uri"))


def build_metric_loggers(
    cfg: ConfigNode | Mapping[str, Any] | None,
    *,
    run_config: dict[str, Any] | None = None,
    rank: int | None = None,
) -> list[MetricLogger]:
    """The metric loggers a config asks for (`wandb:`, `mlflow:`); `run_config` is logged as-is."""
    sections = _sections(cfg)
    loggers: list[MetricLogger] = []
    try:
        if "wandb" in sections:
            loggers.append(WandbLogger(**sections["wandb"], config=run_config, rank=rank))
        if "mlflow" in sections:
            loggers.append(MlflowLogger(**sections["mlflow"], config=run_config, rank=rank))
    except BaseException:
        for started in loggers:
            started.close()
        raise
    return loggers


def _sections(cfg: ConfigNode | Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The logger sections present (not null or false), checked together for mistakes."""
    if cfg is None:
        return {}
    found: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    for name, (keys, required) in _SECTIONS.items():
        section = cfg.get(name)
        if section is None or section is False:
            continue
        data = section.to_dict() if isinstance(section, ConfigNode) else section
        where = cfg.where(name) if isinstance(cfg, ConfigNode) else ""
        if not isinstance(data, Mapping):
            problems.append(Problem(name, f"must be a mapping of {name} settings", where))
            continue
        for key in data:
            if key not in keys:
                problems.append(
                    Problem(f"{name}.{key}", f"unknown key{_suggest(name, key, keys)}", where)
                )
        for key, what in required.items():
            if not data.get(key):
                problems.append(Problem(f"{name}.{key}", f"is required ({what})", where))
        tags = data.get("tags")
        if tags is not None and not isinstance(tags, str | list | tuple | Mapping):
            problems.append(Problem(f"{name}.tags", "must be a list or a mapping", where))
        found[name] = dict(data)
    if problems:
        raise ConfigError(problems)
    return found


def _suggest(section: str, key: str, keys: tuple[str, ...]) -> str:
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if match:
        return f" (did you mean '{section}.{match[0]}'?)"
    return f"; valid keys: {', '.join(keys)}"
