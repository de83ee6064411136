"""Weights & Biases logging through the optional extra `automodel-core[wandb]`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ..config import UserError
from ._metric_logger import metrics_row
from ._rank import global_rank

logger = logging.getLogger(__name__)

WANDB_INSTALL = "pip install 'automodel-core[wandb]'"
WANDB_KEYS = ("project", "entity", "name", "group", "tags", "mode", "dir")


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
        group: str | None = None,
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
            group=group,
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
        step, row = metrics_row(metrics, split)
        self.run.log(row, step=step)

    def close(self) -> None:
        """Finish the run, uploading (or, offline, writing) what remains."""
        if self.run is not None:
            self.run.finish()
            self.run = None
