"""The model part: consolidated safetensors in, ``set_model_state_dict`` out, shapes checked first.

torch.distributed.checkpoint is imported where it is used: it pulls in DTensor and sympy
(seconds), which ``import automodel.checkpoint`` and the offline tools do not need.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ._dist import DistContext
from ._errors import CheckpointError
from ._layout import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from ._safetensors_io import load_consolidated, read_index
from ._tensors import drop_aliases, is_dtensor

_MAX_HEADER = 100 * 2**20


@dataclass(frozen=True)
class TensorHeader:
    """One tensor as described by a safetensors header (no data read)."""

    dtype: str  # safetensors name: F32, BF16, I64, ...
    shape: tuple[int, ...]
    file: str

    @property
    def numel(self) -> int:
        """Number of elements."""
        n = 1
        for dim in self.shape:
            n *= dim
        return n


def read_safetensors_header(path: Path) -> dict[str, TensorHeader]:
    """Names, dtypes and shapes of one safetensors file; CheckpointError if it is corrupt."""

    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(f"weight file {path} is corrupt or truncated: {why}")

    if not path.is_file():
        raise CheckpointError(f"weight file {path} is missing")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise corrupt(f"{size} bytes, shorter than the 8-byte header length")
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, _MAX_HEADER):
            raise corrupt(f"header length {length} does not fit in a {size}-byte file")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise corrupt(f"header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = size - 8 - length
    out: dict[str, TensorHeader] = {}
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            shape = tuple(int(d) for d in shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise corrupt(f"bad header entry for {name!r}") from exc
        if not 0 <= start <= end <= data_size:
            raise corrupt(f"tensor {name!r} ends at byte {end} of a {data_size}-byte data section")
        out[name] = TensorHeader(str(dtype), shape, path.name)
    return out


def read_model_header(model_dir: Path) -> dict[str, TensorHeader]:
    """Every tensor of a consolidated model folder (single file or index), from headers only."""
    single = model_dir / SAFE_WEIGHTS_NAME
    if single.is_file():
        return read_safetensors_header(single)
    index = model_dir / SAFE_WEIGHTS_INDEX_NAME
    if not index.is_file():
        raise CheckpointError(
            f"no consolidated weights in {model_dir}: expected {SAFE_WEIGHTS_NAME} "
            f"or {SAFE_WEIGHTS_INDEX_NAME}"
        )
    weight_map = read_index(index)
    out: dict[str, TensorHeader] = {}
    for file_name in dict.fromkeys(weight_map.values()):
        out.update(read_safetensors_header(model_dir / file_name))
    missing = [n for n in weight_map if n not in out]
    if missing:
        raise CheckpointError(f"index {index} lists tensors no shard holds: {few_names(missing)}")
    return {name: out[name] for name in weight_map}


def few_names(names: list[str], n: int = 5) -> str:
    """The first ``n`` names and how many there are in all."""
    shown = ", ".join(names[:n])
    return f"{shown} (and {len(names) - n} more; {len(names)} in all)" if len(names) > n else shown


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full CPU state dict on rank 0 (empty elsewhere), tied aliases dropped; a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    _, aliases = drop_aliases(get_model_state_dict(model))
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)
    return {k: v for k, v in full.items() if k not in aliases}


def live_storages(model: torch.nn.Module) -> set[int]:
    """Addresses of the CPU storages behind the model's state (local shards for DTensors)."""
    live = set()
    for tensor in model.state_dict().values():
        local = tensor.to_local() if is_dtensor(tensor) else tensor
        if local.device.type == "cpu" and local.numel():
            live.add(local.untyped_storage().data_ptr())
    return live


def check_model_compatible(
    model: torch.nn.Module, saved: dict[str, TensorHeader], model_dir: Path
) -> dict[str, str]:
    """Raise CheckpointError on missing, unexpected or reshaped tensors; return {alias: source}."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    expected = get_model_state_dict(model)
    _, aliases = drop_aliases(expected)
    missing = [n for n in expected if n not in saved and aliases.get(n) not in saved]
    unexpected = [n for n in saved if n not in expected]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} tensor(s) the model has: {few_names(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensor(s): {few_names(unexpected)}")
        raise CheckpointError(f"model weights in {model_dir} do not fit: {'; '.join(problems)}")
    for name, tensor in expected.items():
        header = saved.get(name) or saved[aliases[name]]
        if tuple(tensor.shape) != header.shape:
            raise CheckpointError(
                f"shape mismatch for {name!r}: checkpoint has {list(header.shape)} "
                f"({header.file}), model has {list(tensor.shape)}"
            )
    return {a: s for a, s in aliases.items() if a not in saved}


def restore_model(model: torch.nn.Module, model_dir: Path, ctx: DistContext) -> None:
    """Load consolidated weights into ``model`` (plain, DDP or FSDP2/DTensor)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    aliases = check_model_compatible(model, read_model_header(model_dir), model_dir)
    broadcast = ctx.world_size > 1 and any(is_dtensor(t) for t in model.state_dict().values())
    state: dict[str, torch.Tensor] = {}
    error: BaseException | None = None
    if ctx.is_main or not broadcast:
        try:
            state = load_consolidated(model_dir)
            for alias, source in aliases.items():
                state[alias] = state[source]
        except CheckpointError as exc:
            error = exc
    ctx.agree(error, f"reading {model_dir}")
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=broadcast, strict=True)
    set_model_state_dict(model, state, options=options)


def model_dir_has_weights(model_dir: str | os.PathLike[str]) -> bool:
    """Whether ``model_dir`` holds consolidated weights (single file or index)."""
    root = Path(model_dir)
    return (root / SAFE_WEIGHTS_NAME).is_file() or (root / SAFE_WEIGHTS_INDEX_NAME).is_file()
