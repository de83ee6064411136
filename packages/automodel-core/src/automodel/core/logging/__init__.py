"""Logging: rank-0 log lines, progress bars, JSONL metrics files and optional Weights & Biases.

```python
from automodel.core.logging import JsonlWriter, ProgressBar, setup_logging

setup_logging("INFO")
train_log = JsonlWriter(run_dir / "training.jsonl")
with ProgressBar(total=max_steps, desc="train") as bar:
    ...
    train_log.write(sample)
    bar.update(1, loss=sample.loss)
```
"""

from ._jsonl import JsonlWriter
from ._progress import ProgressBar
from ._rank import global_rank
from ._setup import DATE_FORMAT, LOG_FORMAT, setup_logging
from ._wandb import (
    WANDB_INSTALL,
    WANDB_KEYS,
    MetricLogger,
    WandbLogger,
    build_metric_loggers,
    check_metric_loggers,
    check_wandb_available,
)

__all__ = [
    "DATE_FORMAT",
    "LOG_FORMAT",
    "WANDB_INSTALL",
    "WANDB_KEYS",
    "JsonlWriter",
    "MetricLogger",
    "ProgressBar",
    "WandbLogger",
    "build_metric_loggers",
    "check_metric_loggers",
    "check_wandb_available",
    "global_rank",
    "setup_logging",
]
