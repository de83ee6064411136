"""The model part: consolidated safetensors in, ``set_model_state_dict`` out, shapes checked first.

A :class:`WeightsFormat` says which tensors (all, or the trainable parameters only), under
which key prefix and in which files; names inside this module are always the model's own,
as ``get_model_state_dict`` spells them (DDP's ``module.`` and similar wrapper names removed).

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
from ._layout import MODEL_FILE_STEM, weights_file_name, weights_index_name
from ._safetensors_io import find_weight_files, load_consolidated, read_index
from ._tensors import alias_key, drop_aliases, is_dtensor
from ._weights_format import HF_WEIGHTS, WeightsFormat

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


def read_model_header(model_dir: Path, file_stem: str = MODEL_FILE_STEM) -> dict[str, TensorHeader]:
    """Every tensor of a consolidated model folder (single file or index), from headers only."""
    found, sharded = find_weight_files(model_dir, file_stem)
    if not sharded:
        return read_safetensors_header(found)
    index = found
    weight_map = read_index(index)
    out: dict[str, TensorHeader] = {}
    for file_name in dict.fromkeys(weight_map.values()):
        out.update(read_safetensors_header(model_dir / file_name))
    missing = [n for n in weight_map if n not in out]
    if missing:
        raise CheckpointError(f"index {index} lists tensors no shard holds: {few_names(missing)}")
    return {name: out[name] for name in weight_map}


def saved_model_header(
    model_dir: Path, weights_format: WeightsFormat = HF_WEIGHTS
) -> dict[str, TensorHeader]:
    """Every saved tensor under the model's names (key prefix stripped, parts joined)."""
    out: dict[str, TensorHeader] = {}
    for folder in weights_format.folders:
        where = model_dir / folder
        header = read_model_header(where, weights_format.file_stem)
        header = strip_key_prefix(header, weights_format.key_prefix, where)
        out |= {weights_format.model_name(folder, n): h for n, h in header.items()}
    return out


def few_names(names: list[str], n: int = 5) -> str:
    """The first ``n`` names and how many there are in all."""
    shown = ", ".join(names[:n])
    return f"{shown} (and {len(names) - n} more; {len(names)} in all)" if len(names) > n else shown


def trainable_names(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> set[str]:
    """The names in ``state`` (``get_model_state_dict(model)``) of parameters that require grad.

    Matched by memory, not by name, so wrapper prefixes (DDP's ``module.``, ``_orig_mod.``) and
    FSDP2's DTensor parameters need no special case; tied names of one parameter all count.
    CheckpointError if a trainable parameter has no entry in ``state``.
    """
    wanted: dict[object, str] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = alias_key(param)
        if key is None:
            raise CheckpointError(
                f"trainable parameter {name!r} has no memory to find it by in the model's "
                "state dict (is it on the meta device?)"
            )
        wanted.setdefault(key, name)
    found: set[str] = set()
    seen: set[object] = set()
    for name, tensor in state.items():
        key = alias_key(tensor)
        if key is not None and key in wanted:
            found.add(name)
            seen.add(key)
    lost = [name for key, name in wanted.items() if key not in seen]
    if lost:
        raise CheckpointError(
            f"{len(lost)} trainable parameter(s) are not in the model's state dict as "
            f"themselves (a state_dict hook converts them?): {few_names(lost)}"
        )
    return found


def full_model_state(
    model: torch.nn.Module, weights_format: WeightsFormat = HF_WEIGHTS
) -> dict[str, torch.Tensor]:
    """The full CPU state dict on rank 0 (empty elsewhere), tied aliases dropped; a collective.

    With ``weights_format.trainable_only`` only the trainable parameters are gathered and
    returned. Keys are the model's own names (no ``key_prefix``).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    local = get_model_state_dict(model)  # local shards: no communication
    _, aliases = drop_aliases(local)
    keep: set[str] | None = None
    if weights_format.trainable_only:
        keep = trainable_names(model, local)
        if not keep:
            raise CheckpointError(
                f"the model has no trainable parameters, and {weights_format.describe()} "
                "saves only those (are all parameters frozen?)"
            )
    options = StateDictOptions(
        full_state_dict=True,
        cpu_offload=True,
        ignore_frozen_params=weights_format.trainable_only,  # frozen weights are not gathered
    )
    full = get_model_state_dict(model, options=options)
    return {k: v for k, v in full.items() if k not in aliases and (keep is None or k in keep)}


def model_part_state(
    model: torch.nn.Module, sender: bool, weights_format: WeightsFormat = HF_WEIGHTS
) -> dict[str, torch.Tensor]:
    """This pipeline stage's full CPU state where ``sender`` (else empty); a collective.

    Each stage's sharded tensors are gathered over their own mesh (the stage's data-parallel
    ranks) one at a time; senders (the ranks of the pipeline that holds global rank 0: the
    others' copies are the same) keep a CPU copy for ``merge_model_parts`` on rank 0.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    local = get_model_state_dict(model)
    _, aliases = drop_aliases(local)
    keep = trainable_names(model, local) if weights_format.trainable_only else None
    part: dict[str, torch.Tensor] = {}
    for name, tensor in local.items():
        if name in aliases or (keep is not None and name not in keep):
            continue
        full = tensor.full_tensor() if is_dtensor(tensor) else tensor  # same order on every rank
        if sender:
            part[name] = full.detach().to("cpu", copy=True)
    return part


def merge_model_parts(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One state dict from the pipeline stages' parts.

    A name in two parts (a tied embedding: the first stage's and the last stage's copy) must
    hold equal tensors; anything else is an error.
    """
    merged: dict[str, torch.Tensor] = {}
    for part in parts:
        differ = sorted(n for n in set(part) & set(merged) if not torch.equal(part[n], merged[n]))
        if differ:
            raise CheckpointError(
                f"pipeline stages hold different values under the same name(s): "
                f"{few_names(differ)}; a parameter on two stages (a tied embedding) must be kept "
                "equal (automodel.distributed.sum_tied_embedding_grads after each backward)"
            )
        merged.update(part)
    return merged


def live_storages(model: torch.nn.Module) -> set[int]:
    """Addresses of the CPU storages behind the model's state (local shards for DTensors)."""
    live = set()
    for tensor in model.state_dict().values():
        local = tensor.to_local() if is_dtensor(tensor) else tensor
        if local.device.type == "cpu" and local.numel():
            live.add(local.untyped_storage().data_ptr())
    return live


def strip_key_prefix(
    saved: dict[str, TensorHeader], prefix: str, where: Path
) -> dict[str, TensorHeader]:
    """``saved`` under the model's names: ``prefix`` removed; CheckpointError if a key lacks it."""
    if not prefix:
        return saved
    lacking = [name for name in saved if not name.startswith(prefix)]
    if lacking:
        raise CheckpointError(
            f"model weights in {where} do not fit: {len(lacking)} tensor name(s) lack the key "
            f"prefix {prefix!r}: {few_names(lacking)}"
        )
    return {name[len(prefix) :]: header for name, header in saved.items()}


def check_model_compatible(
    model: torch.nn.Module,
    saved: dict[str, TensorHeader],
    model_dir: Path,
    *,
    trainable_only: bool = False,
) -> tuple[set[str], dict[str, str]]:
    """Raise CheckpointError on missing, unexpected or reshaped tensors.

    ``saved`` is keyed by the model's names. Returns (the names to load, {alias: source}):
    every tensor of the model, or with ``trainable_only`` its trainable parameters.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    everything = get_model_state_dict(model)
    _, aliases = drop_aliases(everything)
    names = trainable_names(model, everything) if trainable_only else set(everything)
    expected = {k: v for k, v in everything.items() if k in names}
    missing = [n for n in expected if n not in saved and aliases.get(n) not in saved]
    unexpected = [n for n in saved if n not in expected]
    if missing or unexpected:
        what = "trainable tensor(s)" if trainable_only else "tensor(s)"
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} {what} the model has: {few_names(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensor(s): {few_names(unexpected)}")
            frozen = [n for n in unexpected if n in everything]
            if frozen:
                problems.append(
                    f"{len(frozen)} of them are frozen parameters or buffers of the model, and "
                    f"only trainable parameters are restored: {few_names(frozen)}"
                )
        raise CheckpointError(f"model weights in {model_dir} do not fit: {'; '.join(problems)}")
    for name, tensor in expected.items():
        header = saved.get(name) or saved[aliases[name]]
        if tuple(tensor.shape) != header.shape:
            raise CheckpointError(
                f"shape mismatch for {name!r}: checkpoint has {list(header.shape)} "
                f"({header.file}), model has {list(tensor.shape)}"
            )
    return names, {a: s for a, s in aliases.items() if a in names and a not in saved}


def restore_model(
    model: torch.nn.Module,
    model_dir: Path,
    ctx: DistContext,
    weights_format: WeightsFormat = HF_WEIGHTS,
) -> None:
    """Load consolidated weights into ``model`` (plain, DDP or FSDP2/DTensor).

    With ``weights_format.trainable_only`` only the trainable parameters are loaded; frozen
    parameters and buffers keep their values.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    stem, prefix = weights_format.file_stem, weights_format.key_prefix
    saved = saved_model_header(model_dir, weights_format)
    _, aliases = check_model_compatible(
        model, saved, model_dir, trainable_only=weights_format.trainable_only
    )
    broadcast = ctx.world_size > 1 and any(is_dtensor(t) for t in model.state_dict().values())
    state: dict[str, torch.Tensor] = {}
    error: BaseException | None = None
    if ctx.is_main or not broadcast:
        try:
            for folder in weights_format.folders:
                loaded = load_consolidated(model_dir / folder, file_stem=stem)
                model_name = weights_format.model_name
                state |= {model_name(folder, n[len(prefix) :]): t for n, t in loaded.items()}
            for alias, source in aliases.items():
                state[alias] = state[source]
        except CheckpointError as exc:
            error = exc
    ctx.agree(error, f"reading {model_dir}")
    options = StateDictOptions(
        full_state_dict=True,
        broadcast_from_rank0=broadcast,
        strict=not weights_format.trainable_only,  # the subset was checked above
    )
    set_model_state_dict(model, state, options=options)


def model_dir_has_weights(
    model_dir: str | os.PathLike[str], file_stem: str = MODEL_FILE_STEM
) -> bool:
    """Whether ``model_dir`` holds consolidated weights of ``file_stem`` (single file or index)."""
    root = Path(model_dir)
    return (root / weights_file_name(file_stem)).is_file() or (
        root / weights_index_name(file_stem)
    ).is_file()
