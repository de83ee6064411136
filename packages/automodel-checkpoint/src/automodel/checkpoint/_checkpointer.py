"""Checkpointer: save and restore the full training state of any state_dict()-able objects."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

import torch
import torch.distributed as dist

from ._async import BackgroundWriter, SnapshotBuffers
from ._dist import DistContext, make_context
from ._errors import CheckpointError
from ._finite import nonfinite_error
from ._layout import CheckpointLayout
from ._manifest import CheckpointInfo, read_checkpoint_info, verify_files
from ._model_state import restore_model
from ._optim_state import OPTIM_STATES_FILE, restore_optimizer
from ._retention import (
    STAGING_PREFIX,
    clean_leftovers,
    find_latest,
    list_checkpoints,
    prune,
    set_aside,
)
from ._save import SaveJob, capture
from ._sizes import parse_size
from ._space import room_for_next
from ._train_state import (
    apply_states,
    check_stateful,
    rank_file_name,
    read_states_file,
    select_states,
)
from ._weights_format import HF_WEIGHTS, WeightsFormat

logger = logging.getLogger(__name__)
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Checkpointer:
    """Saves ``epoch_<e>_step_<s>/`` folders under ``checkpoint_dir`` and restores them.

    Every rank calls :meth:`save` and :meth:`restore` (they are collectives when
    torch.distributed is initialised); rank 0 writes the shared parts and publishes.

    ``weights_format`` says how ``model/`` holds the model: :data:`HF_WEIGHTS` (every tensor,
    a Hugging Face model folder) or :data:`PEFT_ADAPTER` (the trainable parameters only, as a
    Hugging Face PEFT adapter). It is recorded in ``checkpoint.json``; restoring a checkpoint
    saved in another format is an error.

    ``pp_group`` (pipeline parallelism): this rank's pipeline process group. The ``model``
    given to save/restore is then this rank's stage, holding its part of the parameters under
    the whole model's names; saving merges the stages into one Hugging Face folder and one
    optimizer state (loadable by any layout), restoring the optimizer loads the stage's part.
    Restore the weights into the whole model before splitting it, then the optimizer with the
    stage and ``load_weights=False``.

    ``group``: the processes that save and restore together when they are not all of them
    (a model trained on some of the processes, another model on the rest); its rank 0, which
    must be global rank 0 (torch gathers the full state there), writes. Default: every
    process.
    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str],
        *,
        keep_last_n: int | None = None,
        async_save: bool = False,
        max_shard_size: str | int = "5GB",
        weights_format: WeightsFormat = HF_WEIGHTS,
        pp_group: dist.ProcessGroup | None = None,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        if keep_last_n is not None and (
            isinstance(keep_last_n, bool) or not isinstance(keep_last_n, int) or keep_last_n < 1
        ):
            raise ValueError(f"keep_last_n must be None or a positive int, got {keep_last_n!r}")
        if not isinstance(weights_format, WeightsFormat):
            raise TypeError(
                "weights_format must be a WeightsFormat (such as HF_WEIGHTS or PEFT_ADAPTER), "
                f"got {weights_format!r}"
            )
        self.checkpoint_dir = Path(checkpoint_dir)
        self.keep_last_n = keep_last_n
        self.async_save = bool(async_save)
        self.max_shard_size = parse_size(max_shard_size)
        self.weights_format = weights_format
        self.pp_group = pp_group
        self.group = group
        self._group: dist.ProcessGroup | None = None
        self._writer = BackgroundWriter()
        self._buffers = SnapshotBuffers() if self.async_save else None

    def __repr__(self) -> str:
        return (
            f"Checkpointer({str(self.checkpoint_dir)!r}, keep_last_n={self.keep_last_n}, "
            f"async_save={self.async_save}, weights_format={self.weights_format.name})"
        )

    def _context(self) -> DistContext:
        """Rank, world size and the checkpointer's own gloo group (created on first use)."""
        ctx = make_context(self._group, self.group)
        self._group = ctx.group
        return ctx

    def latest(self) -> Path | None:
        """The newest complete checkpoint (LATEST's target, else the highest step), or None."""
        return find_latest(self.checkpoint_dir)

    def checkpoints(self) -> list[Path]:
        """All complete checkpoints, sorted by step."""
        return list_checkpoints(self.checkpoint_dir)

    def set_aside(
        self, destination: str | os.PathLike[str], after_step: int | None = None
    ) -> list[Path]:
        """Move this folder's checkpoints (all, or those after ``after_step``) to ``destination``.

        For a run that starts over, or branches from an older checkpoint, without deleting
        or later overwriting what was saved. Not a collective: call it on one rank.
        """
        self._writer.wait()
        return set_aside(self.checkpoint_dir, Path(destination), after_step)

    def save(
        self,
        epoch: int,
        step: int,
        *,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        optim_states: Mapping[str, Any] = _EMPTY,
        train_states: Mapping[str, Any] = _EMPTY,
        write_extras: Callable[[Path], None] | None = None,
    ) -> Path:
        """Save a checkpoint; return its final path (async: the path it has once published).

        A model holding NaN or inf is not saved (NonFiniteWeightsError, nothing written); a
        save that runs out of disk space raises DiskFullError, the earlier checkpoints intact.
        """
        self._writer.wait()  # at most one save in flight; re-raises its error
        check_stateful(optim_states, "optim_states")
        check_stateful(train_states, "train_states")
        if optimizer is not None and model is None:
            raise ValueError("saving an optimizer needs its model (parameters are saved by name)")
        final = CheckpointLayout.for_step(self.checkpoint_dir, epoch, step).path
        staging = final.with_name(STAGING_PREFIX + final.name)
        ctx = self._context()
        ctx.agree(nonfinite_error(model, final.name), f"checking the weights of {final.name}")

        error: BaseException | None = None
        if ctx.is_main:
            try:
                room = room_for_next(self.checkpoint_dir, self.latest(), self.keep_last_n)
                if not room and self.keep_last_n is not None:  # never the newest: it is LATEST
                    prune(self.checkpoint_dir, max(self.keep_last_n - 1, 1))
                self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
                clean_leftovers(self.checkpoint_dir)
                staging.mkdir()
                if write_extras is not None:
                    write_extras(staging)
            except Exception as exc:
                error = exc
        ctx.agree(error, f"preparing checkpoint {final.name}")

        state: dict[str, Any] = {}
        try:  # the model gather inside is a collective that fails on all ranks alike
            state = capture(
                ctx,
                model=model,
                optimizer=optimizer,
                optim_states=optim_states,
                train_states=train_states,
                buffers=self._buffers,
                weights_format=self.weights_format,
                pp_group=self.pp_group,
            )
        except Exception as exc:
            error = exc
        ctx.agree(error, f"capturing the state for checkpoint {final.name}")
        job = SaveJob(
            ctx=ctx,
            staging=staging,
            final=final,
            epoch=epoch,
            step=step,
            max_shard_size=self.max_shard_size,
            keep_last_n=self.keep_last_n,
            weights_format=self.weights_format,
            **state,
        )
        if self.async_save:
            self._writer.submit(job.run)
        else:
            job.run()
        return final

    def wait(self) -> None:
        """Block until an in-flight async save is published; re-raise its exception."""
        self._writer.wait()

    def restore(
        self,
        path: str | os.PathLike[str],
        *,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        optim_states: Mapping[str, Any] = _EMPTY,
        train_states: Mapping[str, Any] = _EMPTY,
        load_weights: bool = True,
        allow_world_size_change: bool = False,
    ) -> CheckpointInfo:
        """Load exactly the parts passed from the checkpoint folder ``path``; return its info.

        ``load_weights=False``: ``model`` only names the optimizer's parameters, its weights
        having been restored by an earlier call (e.g. before freezing and sharding).

        The model and optimizer load into any world size (consolidated weights; DCP reshards
        the optimizer). ``train_states`` are saved per rank, so a checkpoint of another world
        size is refused unless ``allow_world_size_change``: then rank r loads the states of saved
        rank ``r % saved_world_size``, and each state's ``load_state_dict`` must adapt them to
        the new world (as the data sampler and step scheduler of automodel.core do).
        """
        self._writer.wait()
        check_stateful(optim_states, "optim_states", loading=True)
        check_stateful(train_states, "train_states", loading=True)
        if optimizer is not None and model is None:
            raise ValueError("restoring an optimizer needs its model (parameters are named)")
        info = read_checkpoint_info(path)
        verify_files(info)
        _check_parts(info, model if load_weights else None, optimizer, optim_states, train_states)
        if model is not None and load_weights:
            _check_weights_format(info, self.weights_format)
        ctx = self._context()
        resized = info.world_size != ctx.world_size
        if train_states and resized and not allow_world_size_change:
            raise CheckpointError(
                f"checkpoint {info.path} was saved by {info.world_size} rank(s) and this run has "
                f"{ctx.world_size}: train_states are per rank; pass allow_world_size_change=True "
                "if every state adapts itself to the new world size"
            )
        layout = CheckpointLayout(info.path)
        error: BaseException | None = None
        optim_saved: dict[str, Any] = {}
        train_saved: dict[str, Any] = {}
        try:  # read the small files first, so a bad one fails before anything is changed
            if optim_states:
                loaded = read_states_file(layout.optim_dir / OPTIM_STATES_FILE, "optim_states")
                optim_saved = select_states(loaded, optim_states, "optim_states", info.path)
            if train_states:
                saved_rank = ctx.rank % info.world_size
                rank_file = layout.train_state_dir / rank_file_name(saved_rank)
                loaded = read_states_file(rank_file, "train_states")
                train_saved = select_states(loaded, train_states, "train_states", rank_file)
        except CheckpointError as exc:
            error = exc
        ctx.agree(error, f"reading checkpoint {info.path}")
        if model is not None and load_weights:
            restore_model(model, layout.model_dir, ctx, self.weights_format)
        if optimizer is not None and model is not None:
            restore_optimizer(model, optimizer, layout.optim_dir, ctx, self.pp_group is not None)
        apply_states(optim_states, optim_saved, "optim_states")
        apply_states(train_states, train_saved, "train_states")
        return info

    def close(self) -> None:
        """Wait for an in-flight save (re-raising its error), then stop the background thread."""
        try:
            self._writer.close()
        finally:
            if self._buffers is not None:
                self._buffers.clear()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:  # do not hide the error that is already on its way out
            self.close()
        except Exception:
            logger.exception("background checkpoint save failed while handling another error")


def _check_parts(
    info: CheckpointInfo,
    model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    optim_states: Mapping[str, Any],
    train_states: Mapping[str, Any],
) -> None:
    """CheckpointError listing every requested part the checkpoint lacks, and what it has."""
    missing = [
        part
        for part, wanted in (("model", model), ("optimizer", optimizer))
        if wanted is not None and part not in info.parts
    ]
    for kind, wanted, saved in (
        ("optim_states", optim_states, info.optim_states),
        ("train_states", train_states, info.train_states),
    ):
        absent = [name for name in wanted if name not in saved]
        if absent:
            missing.append(f"{kind} [{', '.join(absent)}]")
    if missing:
        raise CheckpointError(
            f"checkpoint {info.path} has no {', '.join(missing)}; it has {info.describe_parts()}"
        )


def _check_weights_format(info: CheckpointInfo, expected: WeightsFormat) -> None:
    """CheckpointError unless the checkpoint's model is stored the way this run reads it."""
    saved = info.weights_format
    if saved != expected:
        raise CheckpointError(
            f"checkpoint {info.path} holds {saved.describe()} but this run restores "
            f"{expected.describe()}; only a Checkpointer(..., weights_format={saved.name}) "
            "restores its weights"
        )
