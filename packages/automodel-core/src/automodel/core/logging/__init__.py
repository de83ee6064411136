"""Logging: rank-0 log lines, progress bars, JSONL metrics files, and W&B or MLflow tracking.

```python
from automodel.core.logging import JsonlWriter, ProgressBar, build_metric_loggers, setup_logging

setup_logging("INFO")
train_log = JsonlWriter(run_dir / "training.jsonl")
trackers = build_metric_loggers(cfg, run_config=redacted_data(cfg))  # `wandb:` / `mlflow:`
with ProgressBar(total=max_steps, desc="train") as bar:
    ...
    train_log.write(sample)
    for tracker in trackers:
        tracker.log(sample, split="train")
    bar.update(1, loss=sample.loss)
```
"""

from ._jsonl import JsonlWriter
from ._loggers import build_metric_loggers, check_metric_loggers
from ._metric_logger import MetricLogger
from ._mlflow import (
    MLFLOW_CONFIG_ARTIFACT,
    MLFLOW_INSTALL,
    MLFLOW_KEYS,
    MlflowLogger,
    check_mlflow_available,
)
from ._progress import ProgressBar
from ._rank import global_rank
from ._setup import DATE_FORMAT, LOG_FORMAT, UPSTREAM_NOISE, quiet_upstream_noise, setup_logging
from ._wandb import WANDB_INSTALL, WANDB_KEYS, WandbLogger, check_wandb_available

__all__ = [
    "DATE_FORMAT",
    "LOG_FORMAT",
    "MLFLOW_CONFIG_ARTIFACT",
    "MLFLOW_INSTALL",
    "MLFLOW_KEYS",
    "UPSTREAM_NOISE",
    "WANDB_INSTALL",
    "WANDB_KEYS",
    "JsonlWriter",
    "MetricLogger",
    "MlflowLogger",
    "ProgressBar",
    "WandbLogger",
    "build_metric_loggers",
    "check_metric_loggers",
    "check_mlflow_available",
    "check_wandb_available",
    "global_rank",
    "quiet_upstream_noise",
    "setup_logging",
]
