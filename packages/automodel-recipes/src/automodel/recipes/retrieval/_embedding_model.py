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
    ROUTER_FILE,
    ROUTES,
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
    if any((path / MODEL_DIR / name).exists() for name in ("config.json", MODULES_FILE)):
        path = path / MODEL_DIR
    return path


def load_embedding_model(path: str | Path) -> EmbeddingModel:
    """The embedding model of a folder: modules.json says where the transformer is and how it is
    pooled and normalised (mean pooling, normalised, without one: a plain HF model folder); a
    Router there, where the query and the passage towers are."""
    folder = model_folder(path)
    modules = _read(folder / MODULES_FILE, [])
    if [m.get("type", "").rsplit(".", 1)[-1] for m in modules] == ["Router"]:
        chains = _routes(folder / modules[0].get("path", ""))
    else:
        chains = [[(m.get("type", ""), folder / m.get("path", "")) for m in modules]]
    towers, heads = [], set()
    for chain in chains:
        transformer, pooling, normalize = folder, "mean", not modules
        for kind, where in chain:
            if kind.endswith("Transformer"):
                transformer = where
            elif kind.endswith("Pooling"):
                pooling = _pooling(_read(where / "config.json", {}), where)
            elif kind.endswith("Normalize"):
                normalize = True
            else:
                raise UserError(
                    f"{folder}: the sentence-transformers module {kind!r} is not supported for "
                    "mining (a Transformer, a Pooling and a Normalize module, or a Router over "
                    "them, are)"
                )
        towers.append(transformer)
        heads.add((pooling, normalize))
    if len(heads) > 1:
        raise UserError(f"{folder}: the query and passage routes pool differently ({heads})")
    (pooling, normalize), transformer = heads.pop(), towers[0]
    settings = _read(transformer / SETTINGS_FILE, {})
    prompts = _read(folder / PROMPTS_FILE, {}).get("prompts") or {}
    tokenizer = load_tokenizer(transformer)  # the query tower's; the towers share one
    backbone = AutoModel.from_pretrained(transformer)
    passage = AutoModel.from_pretrained(towers[1]) if len(towers) > 1 else None
    return EmbeddingModel(
        BiEncoder(backbone, passage, pooling=pooling, normalize=normalize),
        tokenizer,
        prompts.get("query", ""),
        prompts.get("document", prompts.get("passage", "")),
        int(settings.get("max_seq_length") or tokenizer.model_max_length or 512),
        folder,
    )


def _routes(folder: Path) -> list[list[tuple[str, Path]]]:
    """The query and the document route of a Router folder, as (module type, folder) chains."""
    config = _read(folder / ROUTER_FILE, {})
    types, structure = config.get("types", {}), config.get("structure", {})
    if set(structure) != set(ROUTES):
        raise UserError(
            f"{folder / ROUTER_FILE}: a Router with the routes {sorted(structure)} is not "
            f"supported for mining (one with the routes {' and '.join(ROUTES)} is)"
        )
    return [[(types.get(i, ""), folder / i) for i in structure[route]] for route in ROUTES]


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
