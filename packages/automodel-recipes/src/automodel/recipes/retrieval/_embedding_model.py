"""Load a saved embedding model, ours or any sentence-transformers folder, as a `BiEncoder`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automodel.checkpoint import LATEST_FILE, MODEL_DIR, find_latest
from automodel.core.config import UserError
from automodel.core.models import POOLINGS, AutoModel, BiEncoder, load_tokenizer

from ._sentence_transformers import (
    MODULES_FILE,
    OTHER_POOLING_FLAGS,
    POOLING_FLAGS,
    PROMPTS_FILE,
    SETTINGS_FILE,
)


@dataclass
class EmbeddingModel:
    """A loaded embedding model: the encoder, its tokenizer, its prompts and maximum length."""

    encoder: BiEncoder
    tokenizer: Any
    query_prefix: str
    passage_prefix: str
    max_length: int
    folder: Path


def model_folder(path: str | Path) -> Path:
    """The model folder `path` names: itself, or for a checkpoint directory (with LATEST) or one
    checkpoint, the model inside the newest one."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"embedding model not found: {path} does not exist")
    if (path / LATEST_FILE).exists():
        latest = find_latest(path)
        if latest is None:
            raise UserError(f"{path} holds no complete checkpoint")
        path = latest
    if (path / MODEL_DIR / "config.json").exists():
        path = path / MODEL_DIR
    return path


def load_embedding_model(path: str | Path) -> EmbeddingModel:
    """The embedding model of a folder: modules.json says where the transformer is and how it is
    pooled and normalised (mean pooling, normalised, without one: a plain HF model folder)."""
    folder = model_folder(path)
    modules = _read(folder / MODULES_FILE, [])
    transformer, pooling, normalize = folder, "mean", not modules
    for module in modules:
        kind, where = module.get("type", ""), folder / module.get("path", "")
        if kind.endswith("Transformer"):
            transformer = where
        elif kind.endswith("Pooling"):
            pooling = _pooling(_read(where / "config.json", {}), where)
        elif kind.endswith("Normalize"):
            normalize = True
        else:
            raise UserError(
                f"{folder}: the sentence-transformers module {kind!r} is not supported for "
                "mining (a Transformer, a Pooling and a Normalize module are)"
            )
    settings = _read(transformer / SETTINGS_FILE, {})
    prompts = _read(folder / PROMPTS_FILE, {}).get("prompts") or {}
    tokenizer = load_tokenizer(transformer)
    backbone = AutoModel.from_pretrained(transformer)
    return EmbeddingModel(
        BiEncoder(backbone, pooling=pooling, normalize=normalize),
        tokenizer,
        prompts.get("query", ""),
        prompts.get("document", prompts.get("passage", "")),
        int(settings.get("max_seq_length") or tokenizer.model_max_length or 512),
        folder,
    )


def _pooling(config: dict[str, Any], where: Path) -> str:
    mode = config.get("pooling_mode")  # sentence-transformers >= 6 writes one name
    if isinstance(mode, str):
        mode = {"lasttoken": "last"}.get(mode, mode)
        if mode in POOLINGS:
            return mode
        raise UserError(f"{where}: pooling mode {mode!r} is not supported (mean, cls, lasttoken)")
    if any(config.get(flag) for flag in OTHER_POOLING_FLAGS):
        raise UserError(f"{where}: only mean, cls and last-token pooling are supported")
    modes = [mode for mode, flag in POOLING_FLAGS.items() if config.get(flag)]
    if len(modes) != 1:
        raise UserError(f"{where}/config.json: expected exactly one pooling mode, found {modes}")
    return modes[0]


def _read(path: Path, default: Any) -> Any:
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from e
