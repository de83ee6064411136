"""Preparing state-dict tensors for safetensors: aliases, DTensors, devices, contiguity."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch

from ._errors import CheckpointError


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a distributed tensor (duck-typed on ``full_tensor``)."""
    return callable(getattr(tensor, "full_tensor", None))


def tensor_nbytes(tensor: torch.Tensor) -> int:
    """Bytes the full (global) tensor takes on disk."""
    return tensor.numel() * tensor.element_size()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor, or the tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if is_dtensor(tensor) and callable(to_local) else tensor


def _storage_ptr(tensor: torch.Tensor, *, allow_empty: bool = False) -> int:
    """Address of the storage behind ``tensor``; 0 when it has none worth comparing."""
    if tensor.device.type == "meta" or (tensor.numel() == 0 and not allow_empty):
        return 0
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return 0


def alias_key(tensor: torch.Tensor) -> Hashable | None:
    """A key equal for two tensors that are the very same view of the same memory.

    For a DTensor the key comes from its local shard (an empty shard still has the storage
    of its parameter), so every rank of an FSDP2 / TP model drops the same names.
    """
    local = _local(tensor)
    ptr = _storage_ptr(local, allow_empty=True)
    if ptr == 0:
        return None
    return (
        str(local.device),
        ptr,
        local.storage_offset(),
        tuple(local.shape),
        tuple(local.stride()),
        local.dtype,
        tuple(tensor.shape),
        str(getattr(tensor, "placements", "")),
    )


def check_state_dict(state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise TypeError/ValueError unless every entry is a dense tensor under a string key."""
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"state dict keys must be strings, got {name!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(value).__name__}, not a tensor")
        if value.layout != torch.strided:
            raise ValueError(
                f"state dict entry {name!r} is a {value.layout} tensor; save dense ones"
            )


def drop_aliases(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split into (first name of each distinct tensor, {alias name: kept name}).

    Tied weights (e.g. ``lm_head.weight`` is ``model.embed_tokens.weight``) are the same
    view of the same memory; only the first name in iteration order is kept.
    """
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_by_key: dict[Hashable, str] = {}
    for name, tensor in state_dict.items():
        key = alias_key(tensor)
        if key is not None and key in first_by_key:
            aliases[name] = first_by_key[key]
            continue
        if key is not None:
            first_by_key[key] = name
        kept[name] = tensor
    return kept, aliases


def materialize(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A plain, contiguous CPU tensor with the full value (DTensor: collective gather)."""
    if is_dtensor(tensor):
        tensor = tensor.full_tensor()  # collective: every rank must get here
    tensor = tensor.detach()
    if tensor.device.type == "meta":
        raise CheckpointError(f"cannot save {name!r}: it is on the meta device (no data)")
    if tensor.device.type != "cpu":
        tensor = tensor.to("cpu")
    return tensor.contiguous()


def unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Clone any tensor whose storage is also used by an earlier one (safetensors refuses those)."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        ptr = _storage_ptr(tensor)
        if ptr and ptr in seen:
            tensor = tensor.clone()
            ptr = _storage_ptr(tensor)
        if ptr:
            seen.add(ptr)
        out[name] = tensor
    return out
