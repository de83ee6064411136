"""The blocks every training loop ends a step or a validation pass with."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
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
from ._nonfinite import NonfiniteGuard, step_unless_nonfinite
from ._parallel import Parallel
from ._pending import PendingStep
from ._sections import ClipGradNorm, Nonfinite, read_section
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
    """The end of a training step: expert grads, clipping, the optimizer step unless the loss or
    gradient norm is not finite, LR step, zeroed grads; the step's metrics stay on the device."""

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
        num_label_tokens: int | torch.Tensor,
        started: float,
        sums: dict[str, torch.Tensor] | None = None,
    ) -> PendingStep:
        """Apply the step's gradients; `loss_sum`, `real_tokens` and `sums` (more metrics, e.g.
        loss parts) are this rank's, `started` the `time.perf_counter()` at the step's start."""
        if self.moe is not None:
            self.moe.reduce_expert_grads()  # expert-parallel weights: FSDP2/DDP left them out
        grad_norm = clip_grad_norm(  # global: over every shard and pipeline stage
            self.model.parameters(), self.max_grad_norm, parts_group=self.parallel.pp_group,
            copies=self.tied_copies,
        )  # fmt: skip
        device = loss_sum.device
        sums = sums or {}
        local = [loss_sum.double(), _scalar(real_tokens, device)]
        local += [value.to(device, torch.float64) for value in sums.values()]
        summed = self.parallel.sum(torch.stack(local))  # every rank's, without leaving the device
        finite = torch.isfinite(grad_norm.to(device)) & torch.isfinite(summed[0])
        lr = self.optimizer.param_groups[0]["lr"]
        step_unless_nonfinite(self.optimizer, finite)
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.moe is not None:
            self.moe.after_optimizer_step()
        tail = [grad_norm.to(device, torch.float64), (~finite).double()]
        tail.append(_scalar(num_label_tokens, device))
        return PendingStep(
            step=steps.step,
            epoch=steps.epoch,
            lr=lr,
            values=torch.cat([summed, torch.stack(tail)]),
            names=tuple(sums),
            started=started,
            ended=time.perf_counter(),
            mem=peak_memory_gib(self.parallel.device),  # an allocator statistic: no device wait
            source=self,
        )

    def samples(
        self, pending: Sequence[PendingStep], rows: list[list[float]], seconds: float
    ) -> list[MetricsSample]:
        """MetricsSamples of `pending` (read back as `rows`), their throughput over `seconds`.

        MoE load metrics (a collective) cover the window and go on its last step's row.
        """
        window_tokens = sum(row[1] for row in rows)
        tps = window_tokens / seconds if seconds > 0 else None  # every rank's tokens
        per_gpu = tps / self.parallel.world_size if tps is not None else None
        flops = self.flops_per_token
        mfu_all = mfu(per_gpu, flops, self.peak_flops) if per_gpu and flops else None
        extra_last = self.moe.window_metrics() if self.moe is not None else {}
        out = []
        for i, (p, row) in enumerate(zip(pending, rows, strict=True)):
            n = len(p.names)
            extra = dict(zip(p.names, row[2 : 2 + n], strict=True))
            if i == len(pending) - 1:
                extra.update(extra_last)
            grad_norm, skipped, labels = row[2 + n :]
            out.append(
                MetricsSample(
                    step=p.step,
                    epoch=p.epoch,
                    loss=row[0],
                    lr=p.lr,
                    grad_norm=grad_norm,
                    mem=p.mem,
                    tps=tps,
                    tps_per_gpu=per_gpu,
                    mfu=mfu_all,
                    num_label_tokens=int(labels),
                    num_real_tokens=int(row[1]),
                    skipped=bool(skipped),
                    extra=extra,
                )
            )
        return out


def _scalar(value: int | float | torch.Tensor, device: torch.device) -> torch.Tensor:
    """`value` as a float64 0-dim tensor on `device`; a number is filled in there, not copied
    from host memory (a copy from pageable memory waits for the device)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, torch.float64)
    return torch.full((), float(value), dtype=torch.float64, device=device)


def build_training(
    run: RunContext,
    model: nn.Module,
    train_loader: Any,
    moe: MoeStep | None = None,
    **step_options: Any,
) -> tuple[torch.optim.Optimizer, Any, Telemetry, OptimizerStep, int]:
    """(optimizer, LR scheduler, telemetry, optimizer step, total steps) of a training run.

    The optimizer of `optimizer:` over `model`'s trainable parameters (torch's Adam and AdamW
    fused on CUDA unless the section says `fused` or `foreach`: they skip a non-finite step
    without the host waiting), the LR schedule of `lr_scheduler:` over the run's total steps
    (`step_scheduler:` over `train_loader`), the metrics files and loggers with the guard of
    `nonfinite:`, and the step's clipping per `clip_grad_norm:`. `step_options` go to
    OptimizerStep (FLOPs per token, peak FLOPs, tied copies). Restore the training state
    after: it reads these.
    """
    cfg = run.cfg
    try:
        guard = NonfiniteGuard(read_section(cfg, "nonfinite", Nonfinite).patience)
    except ValueError as e:
        raise config_problem(cfg, "nonfinite.patience", str(e)) from e
    defaults = {"fused": True} if _fusable(cfg.optimizer, run.parallel.device) else {}
    optimizer = build_optimizer(model, cfg.optimizer, defaults=defaults)
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
    telemetry = Telemetry(
        run.run_dir, run.logging, cfg, total, listeners=[guard], started=run.started
    )
    max_norm = read_section(cfg, "clip_grad_norm", ClipGradNorm).max_norm
    step = OptimizerStep(
        model, optimizer, lr_scheduler, run.parallel, max_norm, moe, **step_options
    )
    return optimizer, lr_scheduler, telemetry, step, total


_FUSABLE = ("torch.optim.Adam", "torch.optim.AdamW")


def _fusable(section: Any, device: torch.device) -> bool:
    """True for torch's Adam or AdamW on CUDA with neither `fused` nor `foreach` set."""
    keys = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    unset = "fused" not in keys and "foreach" not in keys
    return device.type == "cuda" and keys.get("_target_") in _FUSABLE and unset


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
    telemetry.flush()  # the training rows first (and the MoE load before validation's)
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
