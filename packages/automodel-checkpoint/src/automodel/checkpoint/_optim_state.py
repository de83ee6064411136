"""The optimizer part: tensors through torch.distributed.checkpoint, the rest weights_only.

``optim/optimizer/`` holds only tensors (``state.<fqn>.<name>``), so DCP never unpickles
data (its ``.metadata`` file is a pickle of its own making); hyper-parameters and
non-tensor state go to ``optim/optimizer_meta.pt``, loaded with ``weights_only=True``.
torch.distributed.checkpoint is imported lazily (see _model_state).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from ._dist import DistContext
from ._errors import CheckpointError
from ._model_state import few_names
from ._train_state import read_states_file

OPTIMIZER_DIR = "optimizer"
OPTIMIZER_META_FILE = "optimizer_meta.pt"
OPTIM_STATES_FILE = "optim_states.pt"
_META_KEY = "optimizer"


def _quiet_dcp() -> None:
    """Silence DCP's warning on every single-process save/load (intended here).

    Re-installed before each call because test runners reset the filters between tests;
    ``filterwarnings`` replaces an identical filter rather than adding another one.
    """
    warnings.filterwarnings(
        "ignore", message="torch.distributed is disabled, unavailable or uninitialized"
    )


def split_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, saving: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(flat ``{state.<fqn>.<name>: tensor}`` for DCP, ``{param_groups, state}`` of the rest).

    ``get_optimizer_state_dict`` gives a never-stepped optimizer state by running a step with
    zero gradients and lr 0 (restore needs tensors to load into). When ``saving``, that is
    undone and nothing is saved for it, so resuming starts from step 0 like the original.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    empty = not optimizer.state
    osd = get_optimizer_state_dict(model, optimizer)  # FQN keys
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    if empty and saving:
        optimizer.state.clear()
        osd["state"] = {}
    for fqn, entries in osd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{fqn}.{key}"] = value
            else:
                other.setdefault(fqn, {})[key] = value
    return tensors, {"param_groups": osd["param_groups"], "state": other}


def merge_optimizer_meta(metas: list[dict[str, Any]]) -> dict[str, Any]:
    """The meta of pipeline stages' optimizers as one: group i lists every stage's group i.

    A parameter on two stages (a tied embedding) is listed once.
    """
    merged: dict[str, Any] = {"param_groups": [], "state": {}}
    for meta in metas:
        for i, group in enumerate(meta["param_groups"]):
            if i == len(merged["param_groups"]):
                merged["param_groups"].append({**group, "params": []})
            listed = merged["param_groups"][i]["params"]
            listed.extend(p for p in group["params"] if p not in listed)
        merged["state"].update(meta["state"])
    return merged


def write_optimizer(tensors: dict[str, torch.Tensor], optim_dir: Path, ctx: DistContext) -> None:
    """Save the tensors with DCP into ``optim_dir/optimizer`` (a collective for world > 1)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    _quiet_dcp()
    writer = dcp.FileSystemWriter(
        optim_dir / OPTIMIZER_DIR, single_file_per_rank=True, sync_files=True
    )
    try:
        dcp.save(tensors, storage_writer=writer, process_group=ctx.group, no_dist=ctx.no_dist)
    except CheckpointException as exc:  # a BaseException: `except Exception` would miss it
        raise CheckpointError(f"writing optimizer state to {optim_dir} failed: {exc}") from exc


def _fqn(key: str) -> str:
    """The parameter name in a flat key ``state.<fqn>.<name>``."""
    return key[len("state.") :].rpartition(".")[0]


def _check_keys(
    target: dict[str, torch.Tensor],
    saved: dict[str, Any],
    where: Path,
    has_grads: bool,
    part: bool = False,
) -> None:
    """Raise CheckpointError when the saved tensors do not match the optimizer's.

    ``part``: the optimizer holds one pipeline stage, so the others' tensors are expected.
    """
    missing = [k for k in target if k not in saved]
    unexpected = [] if part else [k for k in saved if k not in target]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(
                f"missing {len(missing)} tensor(s) the optimizer has: {few_names(missing)}"
            )
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensor(s): {few_names(unexpected)}")
        hint = ""
        if not target and has_grads:
            hint = " (the optimizer has no state to load into because its parameters have "
            hint += "gradients; call optimizer.zero_grad(set_to_none=True) before restore)"
        raise CheckpointError(
            f"optimizer state in {where} does not fit: {'; '.join(problems)}{hint}"
        )
    for key, tensor in target.items():
        size = getattr(saved[key], "size", None)
        if size is not None and tuple(size) != tuple(tensor.shape):
            raise CheckpointError(
                f"shape mismatch for optimizer state {key!r}: checkpoint has {list(size)}, "
                f"optimizer has {list(tensor.shape)}"
            )


def restore_optimizer(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    optim_dir: Path,
    ctx: DistContext,
    part: bool = False,
) -> None:
    """Load ``optim_dir`` into ``optimizer`` (resharded by DCP to the current layout).

    ``part``: ``model`` is one pipeline stage; only its parameters' state is loaded.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    meta = read_states_file(optim_dir / OPTIMIZER_META_FILE, "optimizer meta")
    if _META_KEY not in meta or not isinstance(meta[_META_KEY], dict):
        raise CheckpointError(f"{optim_dir / OPTIMIZER_META_FILE} is corrupt: no optimizer entry")
    saved_meta = meta[_META_KEY]
    has_grads = any(p.grad is not None for g in optimizer.param_groups for p in g["params"])
    target, own_meta = split_optimizer_state(model, optimizer)
    reader = dcp.FileSystemReader(optim_dir / OPTIMIZER_DIR)
    try:
        saved = reader.read_metadata().state_dict_metadata
    except (OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"optimizer metadata in {optim_dir} is unreadable: {exc}") from exc
    # parameters the saved optimizer had no state for (never stepped, or never got a gradient)
    # get none here either; DCP's initialisation gave every trainable parameter some
    saved_fqns = {_fqn(k) for k in saved}
    grouped = {fqn for group in saved_meta.get("param_groups", []) for fqn in group["params"]}
    target = {k: v for k, v in target.items() if _fqn(k) in saved_fqns or _fqn(k) not in grouped}
    _check_keys(target, dict(saved), optim_dir, has_grads, part)
    if part:  # other stages' parameters in the saved groups: keep this stage's
        own = {fqn for group in own_meta["param_groups"] for fqn in group["params"]}
        saved_meta = {
            "param_groups": [
                {**group, "params": [fqn for fqn in group["params"] if fqn in own]}
                for group in saved_meta["param_groups"]
            ],
            "state": {k: v for k, v in saved_meta.get("state", {}).items() if k in own},
        }
    _quiet_dcp()
    try:
        dcp.load(target, storage_reader=reader, process_group=ctx.group, no_dist=ctx.no_dist)
    except (Exception, CheckpointException) as exc:  # a BaseException, per-rank failures
        raise CheckpointError(f"loading optimizer state from {optim_dir} failed: {exc}") from exc
    state: dict[str, dict[str, Any]] = {}
    for fqn, entries in saved_meta.get("state", {}).items():
        state.setdefault(fqn, {}).update(entries)
    for key, tensor in target.items():
        state.setdefault(_fqn(key), {})[key.rpartition(".")[2]] = tensor
    osd = {"state": state, "param_groups": saved_meta["param_groups"]}
    try:
        # keys were checked above; non-strict lets stateless parameters stay stateless
        set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(strict=False))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"optimizer state in {optim_dir} does not fit: {exc}") from exc
