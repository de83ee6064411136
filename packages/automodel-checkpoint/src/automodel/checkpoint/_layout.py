"""Names of the files and folders that make up a checkpoint directory.

```
<checkpoint_dir>/
  epoch_<e>_step_<s>/
    model/          Hugging Face layout: *.safetensors (+ index), config.json, ...
                    (or a PEFT adapter: adapter_model.safetensors, adapter_config.json)
    optim/          optimizer + LR scheduler state
    train_state/    step scheduler, dataloader positions, RNG state
    config.yaml     the resolved config
  LATEST            names the newest complete checkpoint
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MODEL_DIR = "model"
OPTIM_DIR = "optim"
TRAIN_STATE_DIR = "train_state"
CONFIG_FILE = "config.yaml"
LATEST_FILE = "LATEST"

MODEL_FILE_STEM = "model"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_STEM_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_STEP_DIR_RE = re.compile(r"^epoch_(\d+)_step_(\d+)$")


def checkpoint_dir_name(epoch: int, step: int) -> str:
    """The folder name of one checkpoint: ``epoch_<epoch>_step_<step>``."""
    for label, value in (("epoch", epoch), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{label} must be a non-negative int, got {value!r}")
    return f"epoch_{epoch}_step_{step}"


def parse_checkpoint_dir_name(name: str) -> tuple[int, int] | None:
    """``(epoch, step)`` of a name made by :func:`checkpoint_dir_name`, else None."""
    match = _STEP_DIR_RE.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_file_stem(stem: str) -> str:
    """``stem`` if it can name weight files (``<stem>.safetensors``), else ValueError."""
    if not isinstance(stem, str) or not _STEM_RE.match(stem) or stem.endswith(".safetensors"):
        raise ValueError(
            "a weight file stem is a plain file name without '.safetensors' (letters, digits, "
            f"'_', '-', '.'), such as 'model' or 'adapter_model'; got {stem!r}"
        )
    return stem


def weights_file_name(stem: str = MODEL_FILE_STEM) -> str:
    """The single weight file: ``<stem>.safetensors``."""
    return f"{check_file_stem(stem)}.safetensors"


def weights_index_name(stem: str = MODEL_FILE_STEM) -> str:
    """The index of sharded weights: ``<stem>.safetensors.index.json``."""
    return f"{check_file_stem(stem)}.safetensors.index.json"


def shard_file_name(index: int, count: int, stem: str = MODEL_FILE_STEM) -> str:
    """Hugging Face name of weight shard ``index`` (1-based) of ``count``."""
    if not 1 <= index <= count:
        raise ValueError(f"shard index {index} out of range 1..{count}")
    return f"{check_file_stem(stem)}-{index:05d}-of-{count:05d}.safetensors"


def is_weight_file_name(name: str, stem: str = MODEL_FILE_STEM) -> bool:
    """Whether ``name`` is a weight file, shard or index with file stem ``stem``."""
    if name in (weights_file_name(stem), weights_index_name(stem)):
        return True
    return re.fullmatch(rf"{re.escape(stem)}-\d{{5}}-of-\d{{5}}\.safetensors", name) is not None


@dataclass(frozen=True)
class CheckpointLayout:
    """Paths inside one checkpoint folder ``<checkpoint_dir>/epoch_<e>_step_<s>``."""

    path: Path

    @classmethod
    def for_step(cls, checkpoint_dir: str | Path, epoch: int, step: int) -> CheckpointLayout:
        """The layout of the checkpoint for ``epoch``/``step`` under ``checkpoint_dir``."""
        return cls(Path(checkpoint_dir) / checkpoint_dir_name(epoch, step))

    @property
    def epoch_step(self) -> tuple[int, int] | None:
        """``(epoch, step)`` parsed from the folder name, or None if it does not match."""
        return parse_checkpoint_dir_name(self.path.name)

    @property
    def model_dir(self) -> Path:
        """Folder of the consolidated Hugging Face model (or PEFT adapter)."""
        return self.path / MODEL_DIR

    @property
    def optim_dir(self) -> Path:
        """Folder of the optimizer and LR scheduler state."""
        return self.path / OPTIM_DIR

    @property
    def train_state_dir(self) -> Path:
        """Folder of the step scheduler, dataloader and RNG state."""
        return self.path / TRAIN_STATE_DIR

    @property
    def config_path(self) -> Path:
        """The resolved config saved with the checkpoint."""
        return self.path / CONFIG_FILE
