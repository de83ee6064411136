"""The recipes' side of checkpointing: where checkpoints live, restore errors, the HF extras."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from automodel.checkpoint import (
    CONFIG_FILE,
    HF_WEIGHTS,
    MODEL_DIR,
    Checkpointer,
    CheckpointError,
    DiskFullError,
    NonFiniteWeightsError,
    WeightsFormat,
)
from automodel.core.config import ConfigError, ConfigNode, Problem, UserError, save_config

from ._sections import Checkpoint

log = logging.getLogger("automodel.recipes")


def build_checkpointer(
    section: Checkpoint,
    run_dir: Path,
    weights_format: WeightsFormat = HF_WEIGHTS,
    pp_group: Any = None,
    group: Any = None,
) -> Checkpointer:
    """The checkpointer for `<checkpoint_dir>` (default `<run_dir>/checkpoints`).

    `pp_group`: with pipeline parallelism, the model it saves is this rank's stage. `group`:
    the processes that save together (None: every process).
    """
    root = Path(section.checkpoint_dir or run_dir / "checkpoints")
    try:
        return Checkpointer(
            root,
            keep_last_n=section.keep_last_n,
            async_save=section.async_save,
            max_shard_size=section.max_shard_size,
            weights_format=weights_format,
            pp_group=pp_group,
            group=group,
        )
    except ValueError as e:
        raise ConfigError(Problem("checkpoint", str(e))) from e


@contextlib.contextmanager
def restoring(path: Path) -> Iterator[None]:
    """Report a checkpoint that cannot be restored as a user error (exit 2, no traceback)."""
    try:
        yield
    except CheckpointError as e:
        raise UserError(f"cannot resume from {path}: {e}") from e


@contextlib.contextmanager
def reported_saves() -> Iterator[None]:
    """A save that ran out of disk space, or would have written NaN or inf weights, is reported
    as what it is (exit 2, no traceback); the checkpoints saved before are intact."""
    try:
        yield
    except DiskFullError as e:
        raise UserError(str(e)) from e
    except NonFiniteWeightsError as e:
        raise UserError(
            f"{e}. The weights became NaN or inf without a non-finite loss or gradient first (a "
            "step too large for the dtype): lower optimizer.lr or set clip_grad_norm.max_norm, "
            "then rerun: it resumes from the last checkpoint"
        ) from e


def hf_extras_writer(
    model: torch.nn.Module, cfg: ConfigNode, *processors: Any, subfolder: str = MODEL_DIR
) -> Callable[[Path], None]:
    """What a checkpoint needs beside the weights: HF config, generation config, YAML, and each
    of `processors` (tokenizer, image processor: anything with `save_pretrained`).

    `subfolder`: the model's folder in the checkpoint (another one for a second tower).
    """

    def write(path: Path) -> None:
        model_dir = path / subfolder
        model.config.save_pretrained(model_dir)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(model_dir)
        for processor in processors:
            processor.save_pretrained(model_dir)
        save_config(cfg, path / CONFIG_FILE)

    return write
