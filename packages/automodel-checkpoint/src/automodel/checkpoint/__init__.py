"""automodel.checkpoint: consolidated Hugging Face safetensors and the checkpoint layout."""

from ._atomic import atomic_write_text
from ._errors import CheckpointError
from ._layout import (
    CONFIG_FILE,
    LATEST_FILE,
    MODEL_DIR,
    OPTIM_DIR,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    TRAIN_STATE_DIR,
    CheckpointLayout,
    checkpoint_dir_name,
    parse_checkpoint_dir_name,
)
from ._safetensors_io import load_consolidated, save_consolidated
from ._sizes import parse_size

__all__ = [
    "CONFIG_FILE",
    "LATEST_FILE",
    "MODEL_DIR",
    "OPTIM_DIR",
    "SAFE_WEIGHTS_INDEX_NAME",
    "SAFE_WEIGHTS_NAME",
    "TRAIN_STATE_DIR",
    "CheckpointError",
    "CheckpointLayout",
    "atomic_write_text",
    "checkpoint_dir_name",
    "load_consolidated",
    "parse_checkpoint_dir_name",
    "parse_size",
    "save_consolidated",
]
