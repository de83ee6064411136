"""The blocks every training loop ends a step or a validation pass with."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from automodel.core.optim import build_optimizer
from automodel.core.training import (
    MetricsSample,
    StepScheduler,
    clip_grad_norm,
    mfu,
    peak_memory_gib,
    training_flops_per_token,
)

from ._builders import build_scheduler
from ._errors import config_problem
from ._moe import MoeStep
from ._parallel import Parallel
from ._sections import ClipGradNorm, read_section
from ._telemetry import Telemetry

if TYPE_CHECKING:
    from ._run import RunContext

log = logging.getLogger("automodel.recipes")


def model_flops_per_token(model: nn.Module, seq_len: int) -> float | None:
    """Training FLOPs per token of the whole `model` for MFU; None (warned) when not countable.

    Call it on the model as built: before adapters, sharding and pipeline stages. A metric
    never stops training:
    any failure to count is a warning and `mfu: null`.
    """
    try:
        flops = training_flops_per_token(model, seq_len)
    except Exception as e:
        log.warning("no FLOPs per token, so no TFLOP/s or MFU: %s: %s", type(e).__name__, e)
        return None
    if flops is None:
        log.warning("no FLOPs per token for %s, so no TFLOP/s or MFU", type(model).__name__)
    return flops


@dataclass
class OptimizerStep:
    """The end of a training step: expert grads, clipping, optimizer and LR step, zeroed grads,
    then the step's metrics summed over the ranks."""

    model: nn.Module  # the placed model whose parameters are clipped
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    parallel: Parallel
    max_grad_norm: float | None
    moe: MoeStep | None = None
    flops_per_token: float | None = None  # training FLOPs per token, for MFU
    peak_flops: float | None = None  # per device; None: MFU is not reported
    tied_copies: list[nn.Parameter] = field(default_factory=list)  # counted once in the norm

    def __call__(
        self,
        steps: StepScheduler,
        loss_sum: torch.Tensor,
        real_tokens: int,
        num_label_tokens: int,
        started: float,
    ) -> MetricsSample:
        """Apply the step's gradients; `loss_sum` and `real_tokens` are this rank's, `started`
        the `time.perf_counter()` at the step's start."""
        if self.moe is not None:
            self.moe.reduce_expert_grads()  # expert-parallel weights: FSDP2/DDP left them out
        grad_norm = clip_grad_norm(  # global: over every shard and pipeline stage
            self.model.parameters(), self.max_grad_norm, parts_group=self.parallel.pp_group,
            copies=self.tied_copies,
        )  # fmt: skip
        sums = torch.stack([loss_sum.double().cpu(), torch.tensor(float(real_tokens))])
        loss_total, real_total = self.parallel.sum(sums).tolist()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        extra = self.moe.after_optimizer_step() if self.moe is not None else {}
        tps = real_total / (time.perf_counter() - started)  # every rank's tokens
        tps_per_gpu = tps / self.parallel.world_size
        return MetricsSample(
            step=steps.step,
            epoch=steps.epoch,
            loss=loss_total,
            lr=lr,
            grad_norm=float(grad_norm),
            mem=peak_memory_gib(self.parallel.device),
            tps=tps,
            tps_per_gpu=tps_per_gpu,
            mfu=mfu(tps_per_gpu, self.flops_per_token, self.peak_flops),
            num_label_tokens=int(num_label_tokens),
            num_real_tokens=int(real_total),
            extra=extra,
        )


def build_training(
    run: RunContext,
    model: nn.Module,
    train_loader: Any,
    moe: MoeStep | None = None,
    **step_options: Any,
) -> tuple[torch.optim.Optimizer, Any, Telemetry, OptimizerStep, int]:
    """(optimizer, LR scheduler, telemetry, optimizer step, total steps) of a training run.

    The optimizer of `optimizer:` over `model`'s trainable parameters, the LR schedule of
    `lr_scheduler:` over the run's total steps (`step_scheduler:` over `train_loader`), the
    metrics files and loggers, and the step's clipping per `clip_grad_norm:`. `step_options`
    go to OptimizerStep (FLOPs per token, peak FLOPs, tied copies). Restore the training
    state after: it reads these.
    """
    cfg = run.cfg
    optimizer = build_optimizer(model, cfg.optimizer)
    try:
        per_epoch = len(train_loader)
    except TypeError:  # a stream has no length: the run is as long as max_steps
        per_epoch = None
    try:
        total = run.step_scheduler.total_steps(per_epoch)
    except ValueError as e:
        message = "a streamed dataset has no length: set step_scheduler.max_steps"
        raise config_problem(cfg, "step_scheduler.max_steps", message) from e
    lr_scheduler = build_scheduler(cfg, optimizer, total)
    telemetry = Telemetry(run.run_dir, run.logging, cfg, total, started=run.started)
    max_norm = read_section(cfg, "clip_grad_norm", ClipGradNorm).max_norm
    step = OptimizerStep(
        model, optimizer, lr_scheduler, run.parallel, max_norm, moe, **step_options
    )
    return optimizer, lr_scheduler, telemetry, step, total


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Iterable[Any],
    totals: Callable[[Iterable[Any]], tuple[float, int]],
    parallel: Parallel,
    telemetry: Telemetry,
    steps: StepScheduler,
    lr: float,
    moe: MoeStep | None = None,
) -> float:
    """Mean per-token loss over every rank's shard of `loader`, logged to validation.jsonl.

    `totals(batches)` is the recipe's: (summed loss, counted tokens) over this rank's batches,
    optionally with a third item {metric: (hits, count)} whose ratios over every rank are
    logged beside the loss (e.g. `answer/accuracy`). The model is in eval mode inside and back
    in train mode after.
    """
    model.eval()
    loss, tokens, *rest = totals(telemetry.progress(loader, "validation"))
    model.train()
    if moe is not None:
        moe.forget_load()  # the load counted by forwards that are not training
    rates = rest[0] if rest else {}
    names = sorted(rates)  # the same order on every rank
    counts = [float(x) for name in names for x in rates[name]]
    summed = parallel.sum(torch.tensor([loss, tokens, *counts], dtype=torch.float64)).tolist()
    total_loss, total_tokens = summed[0], int(summed[1])
    extra = {
        name: summed[2 + 2 * i] / summed[3 + 2 * i] if summed[3 + 2 * i] else None
        for i, name in enumerate(names)
    }
    val_loss = total_loss / max(total_tokens, 1)
    sample = MetricsSample(
        steps.step, steps.epoch, val_loss, lr, num_label_tokens=total_tokens, extra=extra
    )
    telemetry.log_validation(sample)
    return val_loss
