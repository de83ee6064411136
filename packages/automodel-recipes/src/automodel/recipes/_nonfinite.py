"""Steps whose loss or gradient norm is NaN or inf: skipped without touching the weights, and a
run that keeps producing them stopped with the step that began it."""

from __future__ import annotations

import logging

import torch

from automodel.core.config import UserError
from automodel.core.training import MetricsSample

log = logging.getLogger("automodel.recipes")


def step_unless_nonfinite(optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> None:
    """`optimizer.step()` unless `finite` (a bool tensor, the same on every rank) is false.

    A fused optimizer (torch's Adam, AdamW, SGD, Adagrad with `fused=True`) skips on the device
    from the flag, as under a GradScaler: the host never waits. Any other optimizer can only be
    skipped from the host.
    """
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]
    elif bool(finite):  # deliberate wait for the device: this optimizer cannot skip on its own
        optimizer.step()


class NonfiniteGuard:
    """A telemetry listener: says so for each skipped step; stops the run after `patience` in a row."""

    def __init__(self, patience: int | None):
        if patience is not None and (isinstance(patience, bool) or patience < 1):
            raise ValueError(f"patience must be a whole number >= 1 or null, got {patience!r}")
        self.patience = patience
        self.in_a_row = 0
        self.first: int | None = None  # the first skipped step of the current streak

    def __call__(self, sample: MetricsSample) -> None:
        """Count `sample` if its step was skipped; raise once `patience` were skipped in a row."""
        if not sample.skipped:
            self.in_a_row, self.first = 0, None
            return
        self.in_a_row += 1
        self.first = sample.step if self.first is None else self.first
        log.warning(
            "step %d skipped: loss %s, grad_norm %s are not finite; the weights did not change",
            sample.step, sample.loss, sample.grad_norm,
        )  # fmt: skip
        if self.patience is not None and self.in_a_row >= self.patience:
            raise UserError(
                f"training diverged: the loss or gradient norm was not finite at {self.in_a_row} "
                f"steps in a row, from step {self.first} to step {sample.step} (nonfinite."
                f"patience: {self.patience}); the weights are those of step {self.first - 1}. "
                "Lower optimizer.lr, set clip_grad_norm.max_norm, or check the data of those "
                "steps, then rerun: it resumes from the last checkpoint"
            )
