"""The run context every recipe starts with, and the checkpoint steps of its training loop.

`start_run` does, in this order, what comes before any model: the seed, the batch arithmetic
(checked before a process group exists), logging, processes/mesh/strategy, the run directory,
the checkpointer and where to start (resume by default; a new start moves an earlier run
aside), and the preemption watcher.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from automodel.checkpoint import Checkpointer, WeightsFormat
from automodel.core.config import ConfigNode
from automodel.core.logging import check_metric_loggers, global_rank, setup_logging
from automodel.core.training import StepScheduler, set_seed
from automodel.distributed import destroy_distributed

from ._builders import build_step_scheduler
from ._checkpointing import build_checkpointer, reported_saves, restoring
from ._context_parallel import check_context_parallel_layers
from ._errors import config_problem
from ._fp8 import read_fp8
from ._moe import read_moe
from ._neftune import read_neftune
from ._parallel import Parallel, read_distributed, setup_parallel
from ._peft import build_lora_config
from ._preemption import PreemptionWatcher
from ._qat import FakeQuant, read_qat
from ._run_history import start_point
from ._sections import Checkpoint, Distributed, Logging, Rng, check_plot, read_section
from ._summary import run_summary
from ._telemetry import Telemetry

log = logging.getLogger("automodel.recipes")


@dataclass
class RunContext:
    """What a recipe knows before it builds a model: seed, processes, run directory, checkpoints."""

    cfg: ConfigNode
    seed: int
    distributed: Distributed  # the checked `distributed:` section, its strategy filled in
    step_scheduler: StepScheduler
    logging: Logging
    run_dir: Path
    parallel: Parallel
    preemption: PreemptionWatcher
    checkpoint: Checkpoint | None = None  # None: a recipe that saves nothing (benchmark)
    checkpointer: Checkpointer | None = None
    restore_path: Path | None = None  # the checkpoint this run resumes; None: step 0
    started: float = field(default_factory=time.monotonic)  # for elapsed_s (Telemetry)
    # `qat:` the model's fake quantization, set by prepare_model; the loop calls at_step(step)
    fake_quant: FakeQuant = field(default_factory=FakeQuant)

    @property
    def device(self) -> Any:
        """The torch device this process computes on."""
        return self.parallel.device


def _of_run(name: str) -> property:
    return property(lambda recipe: getattr(recipe.run, name), doc=f"`self.run.{name}`")


class RunViews:
    """The run's parts a recipe's loop reads (`self.parallel`, `self.step_scheduler`, ...), as
    views of `self.run`, the RunContext its `setup()` got from `start_run`."""

    run: RunContext
    step_scheduler = _of_run("step_scheduler")
    parallel = _of_run("parallel")
    device = _of_run("device")
    run_dir = _of_run("run_dir")
    checkpointer = _of_run("checkpointer")
    checkpoint = _of_run("checkpoint")


# The layouts that split a sequence, a layer or the experts, for recipes that have only data
# parallelism: each must be 1.
_SPLITTING = ("tp_size", "cp_size", "pp_size", "ep_size")


def preflight(
    cfg: ConfigNode,
    data_parallel_only: str | None = None,
    world_size: int | None = None,
    also: tuple[str, ...] = (),
) -> Distributed:
    """The checks every training recipe runs before anything is built (no model, no process
    group; `automodel validate` runs them too): the layout for the launched processes (with
    context parallelism, the model's layer kinds where its config is at hand), the batch
    arithmetic, `peft:`, `moe:`, `neftune:`, `fp8:`, `qat:`, the metric loggers' extras and
    `logging.plot`'s. Returns the layout.

    `data_parallel_only`: what the recipe trains (e.g. "VLMs"), when it supports no layout
    besides FSDP2/DDP over every process; tp/cp/pp/ep sizes above 1 are then refused, but for
    those the recipe names in `also` (e.g. `("ep_size",)`).
    `world_size`: the processes the model spans (default: every process launched).
    """
    distributed, dp_size = read_distributed(cfg, world_size)
    splitting = [k for k in _SPLITTING if k not in also]
    for key in splitting if data_parallel_only else ():
        if getattr(distributed, key) != 1:
            message = f"{key} > 1 is not supported for {data_parallel_only} yet; use fsdp2 or ddp over every process"  # fmt: skip
            raise config_problem(cfg, f"distributed.{key}", message)
    check_context_parallel_layers(cfg, distributed.cp_size)
    build_step_scheduler(cfg, dp_size)
    build_lora_config(cfg)
    read_moe(cfg, distributed.ep_size)
    read_neftune(cfg)
    read_fp8(cfg)
    read_qat(cfg)
    check_metric_loggers(cfg)
    check_plot(cfg)
    return distributed


def start_run(
    cfg: ConfigNode,
    *,
    default_run_dir: str,
    weights_format: WeightsFormat | None,
    unused_parameters: bool = False,
    parallel: Parallel | None = None,
) -> RunContext:
    """Seed, processes, run directory and checkpointer, in the order they must come.

    `weights_format`: how checkpoints hold the model (`HF_WEIGHTS`, `PEFT_ADAPTER`); None for
    a recipe that saves no checkpoint. `default_run_dir` applies without `logging.run_dir`.
    `unused_parameters`: whether the recipe's models may leave parameters without a gradient
    in a step (DDP's `find_unused_parameters`, unless `distributed:` says). `parallel`: the
    model's processes, mesh and strategy when the recipe set them up (`setup_parallel` with
    `ranks`: the model on some of the processes); default: `distributed:` over every process.
    """
    started = time.monotonic()
    seed = read_section(cfg, "rng", Rng).seed
    set_seed(seed)  # the same seed on every rank: identical initial weights
    world_size = parallel.world_size if parallel is not None else None
    distributed, dp_size = read_distributed(cfg, world_size)  # batch math before any group
    step_scheduler = build_step_scheduler(cfg, dp_size)
    section = read_section(cfg, "logging", Logging)
    setup_logging(section.level)  # first, so every set-up step is reported
    run_dir = Path(section.run_dir or default_run_dir)
    parallel = parallel or setup_parallel(cfg, unused_parameters)
    if weights_format is None:
        preemption = PreemptionWatcher(())
        return RunContext(cfg, seed, distributed, step_scheduler, section, run_dir, parallel, preemption, started=started)  # fmt: skip
    checkpoint = read_section(cfg, "checkpoint", Checkpoint)
    checkpointer = build_checkpointer(
        checkpoint, run_dir, weights_format, parallel.pp_group, parallel.run_group
    )
    # Resume by default; a new start first moves an earlier run here aside (rank 0)
    restore_path = start_point(checkpointer, checkpoint.restore_from, run_dir, parallel.run_group)
    return RunContext(
        cfg, seed, distributed, step_scheduler, section, run_dir, parallel,
        PreemptionWatcher(checkpoint.preempt_signals), checkpoint, checkpointer, restore_path,
        started,
    )  # fmt: skip


def restore_weights(run: RunContext, model: nn.Module) -> None:
    """Load the resumed checkpoint's weights into the whole model (before it is sharded)."""
    if run.restore_path is not None:
        with restoring(run.restore_path):
            run.checkpointer.restore(run.restore_path, model=model)


def restore_training_state(
    run: RunContext, model: nn.Module, telemetry: Telemetry, **state: Any
) -> None:
    """Load the resumed checkpoint's optimizer, scheduler, data position, RNG and metrics offsets.

    `model` is the placed (sharded) model: it names the optimizer's parameters.
    """
    if run.restore_path is None:
        return
    with restoring(run.restore_path):
        info = run.checkpointer.restore(
            run.restore_path,
            model=model,
            load_weights=False,  # restored before placement (restore_weights)
            allow_world_size_change=True,  # data position and step counters convert
            **state,
        )
    telemetry.resume_at(run.step_scheduler.step)
    log.info(
        "resumed from %s at step %d (saved by %d process(es), now %d)",
        run.restore_path, run.step_scheduler.step, info.world_size, run.parallel.world_size,
    )  # fmt: skip


def is_complete(run: RunContext, outputs_pending: bool = False) -> bool:
    """Whether the resumed run has nothing left to train (and no final output is missing)."""
    if not run.step_scheduler.done or outputs_pending:
        return False
    log.info(
        "the run is complete at step %d (%s); nothing to do. To train on, raise "
        "step_scheduler.max_steps; to start over, --+checkpoint.restore_from fresh",
        run.step_scheduler.step, run.restore_path,
    )  # fmt: skip
    return True


@contextlib.contextmanager
def training_session(
    run: RunContext, telemetry: Telemetry, *, summary: bool = True
) -> Iterator[None]:
    """Preemption signals are watched inside; the checkpointer and telemetry close on the way out.

    A session that ends without an exception (finished, preempted or already complete) then
    draws the plot with `logging.plot: true` and, with `summary`, logs the run's summary from
    rank 0: wall time, steps, tokens, validation loss, the last checkpoint and the plot.
    """
    try:
        run.preemption.install()
        yield
    finally:
        run.preemption.uninstall()
        if run.checkpointer is not None:
            with reported_saves():  # an async save's error comes out here
                run.checkpointer.close()
        telemetry.close()
    if global_rank() == 0:
        plot = _draw_plot(run.run_dir) if run.logging.plot else None
        if summary:
            _log_summary(run, telemetry, plot)


def _draw_plot(run_dir: Path) -> Path | None:
    """`automodel plot <run_dir>` at the end of a run; a failure is a warning, not a failed run."""
    from .plot import plot_runs

    try:
        return plot_runs([run_dir])[0]
    except Exception as e:
        log.warning("could not plot the run: %s: %s", type(e).__name__, e)
        return None


def _log_summary(run: RunContext, telemetry: Telemetry, plot: Path | None) -> None:
    merged = run.run_dir / "merged_model"
    try:
        text = run_summary(
            run.run_dir,
            wall_s=telemetry.elapsed(),
            resumed_at=telemetry.resumed_at,
            checkpoint=run.checkpointer.latest() if run.checkpointer is not None else None,
            merged_model=merged if merged.is_dir() else None,
            plot=plot,
        )
    except Exception as e:  # the run is done: a summary that cannot be made is only a warning
        log.warning("no run summary: %s: %s", type(e).__name__, e)
        return
    log.info("%s", text)


def checkpoint_if_due(run: RunContext, save: Callable[[], Any]) -> bool:
    """After a step: `save()` on schedule, at the end, or when preempted; True means stop now.

    A collective: every rank calls it after every step, so all stop after the same one.
    """
    steps = run.step_scheduler
    preempted = run.preemption.agreed(run.parallel.run_group)
    final = steps.is_last_step and run.checkpoint.save_final
    if preempted or steps.is_ckpt_step or final:
        with reported_saves():
            save()
    if preempted:
        log.warning(
            "stopped by %s after step %d",
            run.preemption.received or "a signal to another process", steps.step,
        )  # fmt: skip
    return preempted


def shutdown(*holders: Any, barrier: bool = True) -> None:
    """Drop everything `holders` hold (any number of models, optimizers, the run context),
    collect it, then end the process group (if any).

    Sharded modules still holding communicators can make gloo abort at exit. Pass
    `barrier=False` after a failure: the other ranks may never reach the barrier.
    """
    for holder in holders:
        if isinstance(holder, dict):
            holder.clear()
        elif hasattr(holder, "__dict__"):
            vars(holder).clear()
    gc.collect()
    destroy_distributed(barrier=barrier)


def run_then_shutdown(holder: Any, *phases: Callable[[], Any]) -> None:
    """Call `phases` in order (e.g. `recipe.setup`, `recipe.train`), then `shutdown(holder)`.

    After a failure the shutdown skips the barrier (the other ranks may never reach it) and the
    exception goes on.
    """
    try:
        for phase in phases:
            phase()
    except BaseException:
        shutdown(holder, barrier=False)
        raise
    shutdown(holder)
