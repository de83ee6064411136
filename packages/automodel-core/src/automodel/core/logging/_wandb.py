"""Weights & Biases logging through the optional extra `automodel-core[wandb]`."""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping
from typing import Any, Protocol

from ..config import ConfigError, ConfigNode, Problem, UserError
from ._rank import global_rank

logger = logging.getLogger(__name__)

WANDB_INSTALL = "pip install 'automodel-core[wandb]'"
WANDB_KEYS = ("project", "entity", "name", "tags", "mode", "dir")
_SPLITS = {"train": "train", "training": "train", "val": "val", "validation": "val"}


class MetricLogger(Protocol):
    """Something that receives metrics rows: `log(metrics, split)` then `close()`."""

    def log(self, metrics: Mapping[str, Any] | Any, split: str = "train") -> None: ...

    def close(self) -> None: ...


def check_wandb_available() -> None:
    """Raise a UserError naming the extra to install when wandb cannot be imported."""
    _import_wandb()


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as e:
        raise UserError(
            f"the config has a `wandb:` section but wandb is not installed; install it with "
            f"`{WANDB_INSTALL}` (or remove the section)"
        ) from e
    return wandb


class WandbLogger:
    """Log metrics rows under `train/` and `val/` and the (already redacted) config to W&B.

    Only rank 0 starts a run; other ranks check that wandb is importable and then do nothing.
    """

    def __init__(
        self,
        project: str,
        entity: str | None = None,
        name: str | None = None,
        tags: list[str] | tuple[str, ...] | str | None = None,
        mode: str | None = None,
        config: dict[str, Any] | None = None,
        dir: str | os.PathLike[str] | None = None,
        *,
        rank: int | None = None,
    ):
        wandb = _import_wandb()
        self.run: Any = None
        if global_rank(rank) != 0:
            return
        if isinstance(tags, str):
            tags = [tags]
        if dir is not None:
            os.makedirs(dir, exist_ok=True)
        self.run = wandb.init(
            project=project,
            entity=entity,
            name=name,
            tags=list(tags) if tags else None,
            mode=mode,
            config=dict(config) if config else None,
            dir=os.fspath(dir) if dir is not None else None,
        )
        logger.info("logging to Weights & Biases: project %s, run %s", project, self.run.name)

    def log(self, metrics: Mapping[str, Any] | Any, split: str = "train") -> None:
        """Log one metrics row (a dict or an object with `to_dict()`) at its `step`."""
        if self.run is None:
            return
        prefix = _SPLITS.get(split)
        if prefix is None:
            raise ValueError(f"unknown split {split!r}; use one of {', '.join(_SPLITS)}")
        data = dict(metrics.to_dict() if hasattr(metrics, "to_dict") else metrics)
        step = data.pop("step", None)
        row = {f"{prefix}/{k}": _plain(v) for k, v in data.items() if v is not None}
        self.run.log(row, step=int(step) if step is not None else None)

    def close(self) -> None:
        """Finish the run, uploading (or, offline, writing) what remains."""
        if self.run is not None:
            self.run.finish()
            self.run = None


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") and callable(value.item) else value


def _section(cfg: ConfigNode | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if cfg is None:
        return None
    section = cfg.get("wandb")
    if section is None or section is False:
        return None
    data = section.to_dict() if isinstance(section, ConfigNode) else section
    where = cfg.where("wandb") if isinstance(cfg, ConfigNode) else ""
    if not isinstance(data, Mapping):
        raise ConfigError(Problem("wandb", "must be a mapping of W&B settings", where))
    problems = [
        Problem(f"wandb.{k}", f"unknown key{_suggest(k)}", where)
        for k in data
        if k not in WANDB_KEYS
    ]
    if not data.get("project"):
        problems.append(Problem("wandb.project", "is required (the W&B project name)", where))
    if problems:
        raise ConfigError(problems)
    return dict(data)


def _suggest(key: str) -> str:
    match = difflib.get_close_matches(key, WANDB_KEYS, n=1, cutoff=0.6)
    return (
        f" (did you mean 'wandb.{match[0]}'?)"
        if match
        else f"; valid keys: {', '.join(WANDB_KEYS)}"
    )


def check_metric_loggers(cfg: ConfigNode | Mapping[str, Any] | None) -> None:
    """Pre-flight check of the logger sections: valid keys, and wandb installed if asked for."""
    if _section(cfg) is not None:
        check_wandb_available()


def build_metric_loggers(
    cfg: ConfigNode | Mapping[str, Any] | None,
    *,
    run_config: dict[str, Any] | None = None,
    rank: int | None = None,
) -> list[MetricLogger]:
    """The metric loggers a config asks for (its `wandb:` section); `run_config` is logged as-is."""
    loggers: list[MetricLogger] = []
    section = _section(cfg)
    if section is not None:
        loggers.append(WandbLogger(**section, config=run_config, rank=rank))
    return loggers
