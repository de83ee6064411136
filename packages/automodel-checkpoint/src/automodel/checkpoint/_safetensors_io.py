"""Consolidated Hugging Face safetensors: ``<stem>.safetensors`` or shards plus an index."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ._atomic import atomic_write, atomic_write_text
from ._errors import CheckpointError
from ._layout import (
    MODEL_FILE_STEM,
    is_weight_file_name,
    shard_file_name,
    weights_file_name,
    weights_index_name,
)
from ._sizes import parse_size
from ._tensors import (
    check_state_dict,
    drop_aliases,
    is_dtensor,
    materialize,
    tensor_nbytes,
    unshare,
)

_FORMAT_METADATA = {"format": "pt"}


def plan_shards(sizes: Mapping[str, int], max_shard_size: int) -> list[list[str]]:
    """Group names in order into shards of at most ``max_shard_size`` bytes (big ones alone)."""
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    for name, size in sizes.items():
        if current and current_size + size > max_shard_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += size
    if current or not shards:
        shards.append(current)
    return shards


def _default_write() -> bool:
    """True on global rank 0, or when torch.distributed is not initialized."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return True


def _header_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """The safetensors header metadata: the caller's plus ``format: pt``."""
    out = dict(metadata or {})
    for key, value in out.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata must map str to str, got {key!r}: {value!r}")
    out.update(_FORMAT_METADATA)
    return out


def save_consolidated(
    state_dict: Mapping[str, torch.Tensor],
    out_dir: str | os.PathLike[str],
    *,
    max_shard_size: int | str = "5GB",
    metadata: Mapping[str, str] | None = None,
    write: bool | None = None,
    file_stem: str = MODEL_FILE_STEM,
) -> list[Path]:
    """Save ``state_dict`` as Hugging Face safetensors in ``out_dir``; return the weight files.

    The layout is what ``transformers`` ``from_pretrained`` loads: one ``model.safetensors``
    when the total fits in ``max_shard_size`` ("5GB", "500MB", "2GiB" or bytes), otherwise
    ``model-0000i-of-0000N.safetensors`` shards plus ``model.safetensors.index.json``.
    ``file_stem`` replaces ``model`` in these names (``"adapter_model"`` for a PEFT adapter).

    * Tensors that are the same memory (tied embeddings and ``lm_head``) are saved once,
      under the first name; ``transformers`` re-ties them on load from the model config.
      Other tensors that overlap in memory are cloned; non-contiguous ones made contiguous;
      tensors on accelerators are copied to the CPU one shard at a time.
    * DTensors are gathered with ``full_tensor()``, a collective: with a distributed
      state dict every rank must call this function, in the same order; only ranks with
      ``write`` true touch the disk. ``write=None`` means "global rank 0 only" when
      ``torch.distributed`` is initialized, and True otherwise.
    * Each file is written under a temporary name, fsynced and renamed into place; weight
      files (of the same ``file_stem``) of an earlier save to the same folder that this save
      does not produce are removed once the new ones are in place; other files are kept.

    Every rank returns the same list: the paths of the weight files (and index) written.
    """
    check_state_dict(state_dict)
    index_name = weights_index_name(file_stem)  # validates the stem
    limit = parse_size(max_shard_size)
    header = _header_metadata(metadata)
    if write is None:
        write = _default_write()
    out = Path(out_dir)

    tensors, _aliases = drop_aliases(state_dict)
    sizes = {name: tensor_nbytes(t) for name, t in tensors.items()}
    total_size = sum(sizes.values())
    shards = [list(sizes)] if total_size <= limit else plan_shards(sizes, limit)
    if len(shards) == 1:
        file_names = [weights_file_name(file_stem)]
    else:
        count = len(shards)
        file_names = [shard_file_name(i + 1, count, file_stem) for i in range(count)]

    if write:
        out.mkdir(parents=True, exist_ok=True)
    for file_name, names in zip(file_names, shards, strict=True):
        if not write:
            for name in names:  # take part in the gathers; keep nothing
                if is_dtensor(tensors[name]):
                    tensors[name].full_tensor()
            continue
        shard = unshare({n: materialize(n, tensors[n]) for n in names})
        atomic_write(out / file_name, lambda tmp, s=shard: save_file(s, tmp, metadata=header))
        del shard

    written = [out / f for f in file_names]
    if len(shards) > 1:
        weight_map = {
            name: file_name
            for file_name, names in zip(file_names, shards, strict=True)
            for name in names
        }
        index = {
            "metadata": {"total_size": total_size},
            "weight_map": dict(sorted(weight_map.items())),
        }
        written.append(out / index_name)
        if write:
            atomic_write_text(written[-1], json.dumps(index, indent=2) + "\n")
    if write:
        _remove_stale_weight_files(out, {p.name for p in written}, file_stem)
    return written


def _remove_stale_weight_files(out: Path, keep: set[str], file_stem: str) -> None:
    """Delete weight files and indexes of ``file_stem`` in ``out`` from an earlier save."""
    for path in out.iterdir():
        if path.is_file() and is_weight_file_name(path.name, file_stem) and path.name not in keep:
            path.unlink(missing_ok=True)


def _read_safetensors(
    path: Path, names: list[str] | None, device: str | torch.device
) -> dict[str, torch.Tensor]:
    """Read ``names`` (all when None) from one safetensors file, as a clear error if corrupt."""
    if not path.is_file():
        raise CheckpointError(f"weight file {path} is missing")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            available = set(f.keys())
            wanted = sorted(available) if names is None else names
            missing = [n for n in wanted if n not in available]
            if missing:
                raise CheckpointError(
                    f"weight file {path} lacks tensor(s) {missing[:5]}"
                    + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                    + " listed in the index"
                )
            return {n: f.get_tensor(n) for n in wanted}
    except SafetensorError as exc:
        raise CheckpointError(f"weight file {path} is corrupt or truncated: {exc}") from exc


def read_index(path: Path) -> dict[str, str]:
    """The ``weight_map`` of a safetensors index, validated."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"index file {path} is corrupt (not valid JSON): {exc}") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"index file {path} is corrupt: no valid 'weight_map' object")
    for file_name in set(weight_map.values()):
        if Path(file_name).name != file_name or file_name in ("", ".", ".."):
            raise CheckpointError(
                f"index file {path} names a file outside its folder: {file_name!r}"
            )
    return weight_map


def find_weight_files(root: Path, file_stem: str = MODEL_FILE_STEM) -> tuple[Path, bool]:
    """(``<stem>.safetensors``, False) or (its index, True); CheckpointError if neither exists."""
    single = root / weights_file_name(file_stem)
    if single.is_file():
        return single, False
    index = root / weights_index_name(file_stem)
    if not index.is_file():
        raise CheckpointError(
            f"no consolidated weights in {root}: expected {single.name} or {index.name}"
        )
    return index, True


def load_consolidated(
    model_dir: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    file_stem: str = MODEL_FILE_STEM,
) -> dict[str, torch.Tensor]:
    """Load the tensors of a folder written by :func:`save_consolidated` (either layout).

    ``file_stem`` names the files as in :func:`save_consolidated`. Tied aliases dropped at
    save time are not restored. Raises :class:`CheckpointError` when the folder has no
    weights, a file is corrupt, or a shard named by the index is missing.
    """
    root = Path(model_dir)
    found, sharded = find_weight_files(root, file_stem)
    if not sharded:
        return _read_safetensors(found, None, device)
    index_path = found
    weight_map = read_index(index_path)
    by_file: dict[str, list[str]] = {}
    for name, file_name in weight_map.items():
        by_file.setdefault(file_name, []).append(name)
    missing = sorted(f for f in by_file if not (root / f).is_file())
    if missing:
        raise CheckpointError(
            f"shard file(s) {', '.join(missing)} referenced by {index_path} are missing"
        )
    result: dict[str, torch.Tensor] = {}
    for file_name, names in by_file.items():
        result.update(_read_safetensors(root / file_name, names, device))
    return {name: result[name] for name in weight_map}
