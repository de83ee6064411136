"""A step's metrics left on the device, and the one read-back that turns a batch of them into rows.

The training step never waits for the device: it queues its work and leaves its numbers (loss,
gradient norm, token counts) as tensors in a `PendingStep`. At a log step `read_back` copies every
pending step's numbers to the host at once, the step's only wait, so `training.jsonl` still gets
one row per step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from automodel.core.training import MetricsSample


class StepSource(Protocol):
    """What made the pending steps: turns their read-back rows into MetricsSamples."""

    def samples(
        self, pending: Sequence[PendingStep], rows: list[list[float]], seconds: float
    ) -> list[MetricsSample]: ...


@dataclass
class PendingStep:
    """One optimizer step's metrics as the step left them: a float64 tensor on the device."""

    step: int
    epoch: int
    lr: float
    values: torch.Tensor  # [loss, real tokens, *sums] over every rank, grad norm, skipped, labels
    names: tuple[str, ...]  # of the sums between the real tokens and the gradient norm
    started: float  # time.perf_counter() at the step's start
    ended: float  # ... once the host had queued all of the step's work
    mem: float | None
    source: StepSource


def read_back(pending: Sequence[PendingStep]) -> list[MetricsSample]:
    """The MetricsSamples of `pending`, in order, with one copy from the device for all of them.

    Throughput is the window's: every step's tokens over the time from the first step's start
    to the end of the copy, less the host's time between steps (data loading), so a step that
    the host queued early is not credited with the device time of the next.
    """
    rows = torch.stack([p.values for p in pending]).cpu().tolist()  # the deliberate wait
    now = time.perf_counter()
    seconds = sum(p.ended - p.started for p in pending[:-1]) + now - pending[-1].started
    return pending[-1].source.samples(pending, rows, seconds)
