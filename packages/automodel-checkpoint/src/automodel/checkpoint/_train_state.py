"""Small stateful objects (schedulers, dataloaders, RNG, metrics): torch.save, weights_only load."""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ._atomic import fsync_path
from ._errors import CheckpointError


def rank_file_name(rank: int) -> str:
    """``rank_<r:05d>.pt``: the train-state file of one rank."""
    return f"rank_{rank:05d}.pt"


def check_stateful(states: Mapping[str, Any], kind: str, *, loading: bool = False) -> None:
    """Raise TypeError unless ``states`` maps non-empty strings to state_dict()-able objects."""
    method = "load_state_dict" if loading else "state_dict"
    for name, obj in states.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"{kind} names must be non-empty strings, got {name!r}")
        if not callable(getattr(obj, method, None)):
            raise TypeError(f"{kind}[{name!r}] ({type(obj).__name__}) has no {method}() method")


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _loads(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def serialize(obj: Any, what: str) -> bytes:
    """``obj`` as torch.save bytes, verified to load back with weights_only=True."""
    try:
        data = _dumps(obj)
    except Exception as exc:  # unpicklable: local classes, lambdas, open files, ...
        raise CheckpointError(f"{what} cannot be saved with torch.save: {exc}") from exc
    try:
        _loads(data)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{what} holds objects that torch.load(weights_only=True) refuses, so it could not "
            f"be restored; use tensors, numbers, strings, lists, tuples and dicts. torch: {exc}"
        ) from None
    return data


def serialize_states(states: Mapping[str, Any], kind: str) -> bytes:
    """``{name: obj.state_dict()}`` as verified torch.save bytes (see :func:`serialize`).

    Serializing at save() time is also the snapshot for async saves: later changes to the
    objects cannot reach the checkpoint, and a state that could not be restored fails now.
    """
    check_stateful(states, kind)
    payload = {name: obj.state_dict() for name, obj in states.items()}
    for name, state in payload.items():
        serialize(state, f"{kind}[{name!r}].state_dict()")
    return _dumps(payload)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (creating its folder) and fsync it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(path.parent)


def read_states_file(path: Path, kind: str) -> dict[str, Any]:
    """The ``{name: state_dict}`` saved in ``path``, loaded with weights_only=True."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{kind} file {path} is missing") from None
    try:
        loaded = _loads(data)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{kind} file {path} is corrupt or unsafe to load: {exc}") from exc
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{kind} file {path} is corrupt: not a dict of states")
    return loaded


def select_states(
    loaded: Mapping[str, Any], wanted: Mapping[str, Any], kind: str, where: Path
) -> dict[str, Any]:
    """The saved state of every name in ``wanted``; CheckpointError naming any that is absent."""
    missing = [name for name in wanted if name not in loaded]
    if missing:
        raise CheckpointError(
            f"{where} has no {kind} {', '.join(map(repr, missing))}; "
            f"it has {', '.join(map(repr, loaded)) or 'none'}"
        )
    return {name: loaded[name] for name in wanted}


def apply_states(states: Mapping[str, Any], saved: Mapping[str, Any], kind: str) -> None:
    """Call ``states[name].load_state_dict(saved[name])`` for every name."""
    for name, obj in states.items():
        try:
            obj.load_state_dict(saved[name])
        except Exception as exc:
            raise CheckpointError(f"{kind}[{name!r}].load_state_dict failed: {exc}") from exc
