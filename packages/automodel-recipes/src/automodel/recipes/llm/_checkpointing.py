"""Writing a recipe checkpoint: HF model directory plus the resolved config, published whole."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from automodel.checkpoint import (
    CONFIG_FILE,
    LATEST_FILE,
    CheckpointLayout,
    atomic_write_text,
    save_consolidated,
)
from automodel.core.config import ConfigNode, save_config


def save_checkpoint(
    root: Path,
    *,
    epoch: int,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    cfg: ConfigNode,
    max_shard_size: str | int,
) -> Path:
    """Save `<root>/epoch_<e>_step_<s>/` (model/, config.yaml) and point LATEST at it."""
    final = CheckpointLayout.for_step(root, epoch, step)
    staging = CheckpointLayout.for_step(root / f".staging-{final.path.name}", epoch, step)
    shutil.rmtree(staging.path.parent, ignore_errors=True)
    save_consolidated(model.state_dict(), staging.model_dir, max_shard_size=max_shard_size)
    model.config.save_pretrained(staging.model_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(staging.model_dir)
    tokenizer.save_pretrained(staging.model_dir)
    save_config(cfg, staging.path / CONFIG_FILE)
    if final.path.exists():
        shutil.rmtree(final.path)
    os.replace(staging.path, final.path)
    shutil.rmtree(staging.path.parent, ignore_errors=True)
    atomic_write_text(root / LATEST_FILE, final.path.name + "\n")
    return final.path
