"""The MetricLogger protocol and the split-prefixed metrics row every tracker logs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

# Split names a caller may pass, and the prefix each one's metrics get.
SPLITS = {"train": "train", "training": "train", "val": "val", "validation": "val"}


class MetricLogger(Protocol):
    """Something that receives metrics rows: `log(metrics, split)` then `close()`."""

    def log(self, metrics: Mapping[str, Any] | Any, split: str = "train") -> None: ...

    def close(self) -> None: ...


def metrics_row(metrics: Mapping[str, Any] | Any, split: str) -> tuple[int | None, dict[str, Any]]:
    """The `step` of a metrics row and its other measured values keyed `<split>/<name>`."""
    prefix = SPLITS.get(split)
    if prefix is None:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    data = dict(metrics.to_dict() if hasattr(metrics, "to_dict") else metrics)
    step = data.pop("step", None)
    row = {f"{prefix}/{k}": plain_value(v) for k, v in data.items() if v is not None}
    return (int(step) if step is not None else None), row


def plain_value(value: Any) -> Any:
    """A tensor's or numpy scalar's Python value; anything else unchanged."""
    return value.item() if hasattr(value, "item") and callable(value.item) else value
