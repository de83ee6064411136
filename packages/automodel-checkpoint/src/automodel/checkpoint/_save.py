"""One save: capture the state (caller's thread), then write, agree and publish (any thread)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ._async import SnapshotBuffers
from ._dist import DistContext
from ._layout import CheckpointLayout
from ._manifest import write_manifest
from ._model_state import full_model_state, live_storages, merge_model_parts, model_part_state
from ._optim_state import (
    OPTIM_STATES_FILE,
    OPTIMIZER_META_FILE,
    merge_optimizer_meta,
    split_optimizer_state,
    write_optimizer,
)
from ._retention import find_latest, fsync_tree, prune, publish
from ._safetensors_io import save_consolidated
from ._space import disk_full_error
from ._train_state import rank_file_name, serialize, serialize_states, write_bytes
from ._weights_format import WeightsFormat

logger = logging.getLogger(__name__)


@dataclass
class SaveJob:
    """Everything one rank must write for one checkpoint, already detached from training."""

    ctx: DistContext
    staging: Path
    final: Path
    epoch: int
    step: int
    max_shard_size: int
    keep_last_n: int | None
    weights_format: WeightsFormat
    has_model: bool
    has_optimizer: bool
    # rank 0 only: {folder under model/: {name as saved (prefixed): tensor}}
    model_state: dict[str, dict[str, torch.Tensor]] | None
    optim_tensors: dict[str, torch.Tensor] | None  # every rank, None without an optimizer
    optimizer_meta: bytes | None  # rank 0 only
    optim_states: bytes | None  # rank 0 only
    train_state: bytes | None  # every rank
    optim_state_names: tuple[str, ...]
    train_state_names: tuple[str, ...]

    def _write_local(self) -> None:
        """The files this rank writes alone."""
        layout = CheckpointLayout(self.staging)
        for folder, state in (self.model_state or {}).items():
            save_consolidated(
                state,
                layout.model_dir / folder,
                max_shard_size=self.max_shard_size,
                write=True,
                file_stem=self.weights_format.file_stem,
            )
        if self.optimizer_meta is not None:
            write_bytes(layout.optim_dir / OPTIMIZER_META_FILE, self.optimizer_meta)
        if self.optim_states is not None:
            write_bytes(layout.optim_dir / OPTIM_STATES_FILE, self.optim_states)
        if self.train_state is not None:
            write_bytes(layout.train_state_dir / rank_file_name(self.ctx.rank), self.train_state)

    def _publish(self) -> None:
        """Rank 0: fsync, write the manifest last, rename into place, LATEST, retention."""
        fsync_tree(self.staging)
        parts = [
            name
            for name, present in (
                ("model", self.has_model),
                ("optimizer", self.has_optimizer),
                ("optim_states", bool(self.optim_state_names)),
                ("train_states", bool(self.train_state_names)),
            )
            if present
        ]
        write_manifest(
            self.staging,
            epoch=self.epoch,
            step=self.step,
            world_size=self.ctx.world_size,
            parts=parts,
            optim_states=self.optim_state_names,
            train_states=self.train_state_names,
            weights_format=self.weights_format,
        )
        publish(self.staging, self.final)
        prune(self.final.parent, self.keep_last_n)

    def _agree(self, error: BaseException | None, what: str) -> None:
        """ctx.agree, with a write that ran out of space reported as a DiskFullError (rank 0
        then removes the partial folder: every rank has stopped writing)."""
        try:
            self.ctx.agree(error, what)
        except Exception as exc:
            latest = find_latest(self.final.parent)
            full = disk_full_error(exc, self.staging, self.final, latest, self.ctx.is_main)
            if full is None:
                raise
            raise full from exc

    def run(self) -> Path:
        """Write this rank's share, then (rank 0) publish; raises on every rank if any failed."""
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            self._write_local()
        except Exception as exc:
            error = exc
        if self.has_optimizer:  # a collective: every rank takes part, even after an error
            try:
                optim_dir = CheckpointLayout(self.staging).optim_dir
                write_optimizer(self.optim_tensors or {}, optim_dir, self.ctx)
            except Exception as exc:
                error = error or exc
        self.model_state = self.optim_tensors = None  # free the snapshot early
        self._agree(error, f"writing checkpoint {self.final.name}")
        if self.ctx.is_main:
            try:
                self._publish()
            except Exception as exc:
                error = exc
        self._agree(error, f"publishing checkpoint {self.final.name}")
        if self.ctx.is_main:
            logger.info("saved checkpoint %s in %.1f s", self.final, time.perf_counter() - start)
        return self.final


def capture(
    ctx: DistContext,
    *,
    model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    optim_states: Mapping[str, Any],
    train_states: Mapping[str, Any],
    buffers: SnapshotBuffers | None,
    weights_format: WeightsFormat,
    pp_group: Any = None,
) -> dict[str, Any]:
    """The SaveJob fields holding state; with ``buffers``, tensors are copied out of training.

    ``pp_group``: ``model`` is this rank's pipeline stage; rank 0 merges the stages' parts.
    """
    model_state = None
    sender = pp_group is not None and 0 in dist.get_process_group_ranks(pp_group)
    if model is not None and pp_group is not None:
        parts = ctx.gather(model_part_state(model, sender, weights_format))  # collectives
        model_state = merge_model_parts(parts) if ctx.is_main else None
    elif model is not None:
        model_state = full_model_state(model, weights_format)  # a collective
    if not ctx.is_main:
        model_state = None
    elif model_state is not None and model is not None:
        if buffers is not None:
            live = live_storages(model)  # gathered/offloaded copies need no second copy
            for name, tensor in model_state.items():
                if tensor.numel() and tensor.untyped_storage().data_ptr() in live:
                    model_state[name] = buffers.copy(f"model.{name}", tensor)
        model_state = weights_format.split(model_state)
    optim_tensors = optimizer_meta = None
    if optimizer is not None and model is not None:
        optim_tensors, meta = split_optimizer_state(model, optimizer, saving=True)
        if pp_group is not None:  # each stage's groups list its own parameters
            metas = ctx.gather(meta if sender else None)
            meta = merge_optimizer_meta([m for m in metas if m is not None]) if metas else meta
        if buffers is not None:
            optim_tensors = {k: buffers.copy(f"optim.{k}", v) for k, v in optim_tensors.items()}
        if ctx.is_main:
            optimizer_meta = serialize({"optimizer": meta}, "the optimizer's param_groups")
    if buffers is not None:
        buffers.drop_unused()
    return {
        "has_model": model is not None,
        "has_optimizer": optim_tensors is not None,
        "model_state": model_state,
        "optim_tensors": optim_tensors,
        "optimizer_meta": optimizer_meta,
        "optim_states": (
            serialize_states(optim_states, "optim_states") if ctx.is_main and optim_states else None
        ),
        "train_state": serialize_states(train_states, "train_states") if train_states else None,
        "optim_state_names": tuple(optim_states),
        "train_state_names": tuple(train_states),
    }
