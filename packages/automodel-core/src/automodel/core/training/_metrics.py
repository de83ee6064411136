"""MetricsSample: the numbers logged after an optimizer step, and peak-memory measurement."""

from __future__ import annotations

import math
import resource
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch


def peak_memory_gib(device: torch.device | str | None = None) -> float:
    """Peak memory in GiB: CUDA peak allocated on a GPU device, else the process's peak RSS."""
    device = torch.device(device) if device is not None else None
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if on_cuda:
        return torch.cuda.max_memory_allocated(device) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


@dataclass
class MetricsSample:
    """Metrics of one optimizer step; `None` means not measured.

    `mem` is in GiB (see `peak_memory_gib`: peak allocated on CUDA, peak RSS on CPU); `tps` is
    tokens per second over all ranks and `tps_per_gpu` per rank (real tokens: `num_real_tokens`
    over the step's forward, backward and optimizer step); `mfu` is a fraction in [0, 1];
    `extra` holds any further metrics (flat JSON-able values) and must not reuse a field name.
    """

    step: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float | None = None
    mem: float | None = None
    tps: float | None = None
    tps_per_gpu: float | None = None
    mfu: float | None = None
    num_label_tokens: int | None = None
    num_real_tokens: int | None = None  # tokens that are not padding, over every rank
    skipped: bool = False  # the loss or gradient norm was not finite: the weights did not change
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = {f.name for f in fields(self)}
        clash = sorted(names & set(self.extra))
        if clash:
            raise ValueError(f"MetricsSample.extra reuses field names: {', '.join(clash)}")

    def to_dict(self) -> dict[str, Any]:
        """A flat dict for one JSONL line: the fields, then the `extra` metrics."""
        data = asdict(self)
        extra = data.pop("extra")
        return {**data, **extra}

    def format(self) -> str:
        """One human-readable line, leaving out what was not measured.

        Extra metrics named `group/name` are shown; deeper names (`moe/layer_3/imbalance`) are
        per-part detail and stay in the JSONL files and metric loggers only.
        """
        parts = [f"step {self.step}", f"epoch {self.epoch}", f"loss {_num(self.loss, '.4f')}"]
        if self.grad_norm is not None:
            parts.append(f"grad_norm {_num(self.grad_norm, '.3f')}")
        if self.skipped:
            parts.append("SKIPPED (not finite)")
        parts.append(f"lr {self.lr:.3e}")
        if self.mem is not None:
            parts.append(f"mem {self.mem:.2f} GiB")
        if self.tps is not None:
            parts.append(f"tps {self.tps:,.0f}")
        if self.tps_per_gpu is not None:
            parts.append(f"tps/gpu {self.tps_per_gpu:,.0f}")
        if self.mfu is not None:
            parts.append(f"mfu {100 * self.mfu:.1f}%")
        if self.num_label_tokens is not None:
            parts.append(f"label_tokens {self.num_label_tokens}")
        parts += [f"{k} {_num(v, '.4g')}" for k, v in self.extra.items() if k.count("/") < 2]
        return " | ".join(parts)


def _num(value: Any, spec: str) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return format(value, spec)
    return str(value)
