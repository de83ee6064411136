"""automodel.checkpoint: full training-state checkpoints, consolidated HF safetensors (or PEFT
adapters), layout."""

from ._atomic import atomic_write_text
from ._checkpointer import Checkpointer
from ._errors import CheckpointError
from ._finite import NonFiniteWeightsError
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
from ._manifest import MANIFEST_FILE, CheckpointInfo, read_checkpoint_info
from ._model_state import full_model_state
from ._retention import find_latest, publish_folder
from ._safetensors_io import load_consolidated, save_consolidated
from ._sizes import parse_size
from ._space import DiskFullError
from ._weights_format import HF_WEIGHTS, PEFT_ADAPTER, WeightsFormat

__all__ = [
    "CONFIG_FILE",
    "HF_WEIGHTS",
    "LATEST_FILE",
    "MANIFEST_FILE",
    "MODEL_DIR",
    "OPTIM_DIR",
    "PEFT_ADAPTER",
    "SAFE_WEIGHTS_INDEX_NAME",
    "SAFE_WEIGHTS_NAME",
    "TRAIN_STATE_DIR",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointLayout",
    "Checkpointer",
    "DiskFullError",
    "NonFiniteWeightsError",
    "WeightsFormat",
    "atomic_write_text",
    "checkpoint_dir_name",
    "find_latest",
    "full_model_state",
    "load_consolidated",
    "parse_checkpoint_dir_name",
    "parse_size",
    "publish_folder",
    "read_checkpoint_info",
    "save_consolidated",
]
