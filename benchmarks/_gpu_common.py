"""What the GPU suite's items share: their context, the table row, and the needs-CUDA signal."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Context:
    """Where an item runs: on a GPU or under --smoke, its work folder, and when it must end."""

    smoke: bool
    work: Path
    deadline: float  # time.monotonic() by which the item is stopped

    def remaining(self) -> float:
        """Seconds left before the item's deadline."""
        return self.deadline - time.monotonic()


class NeedsCuda(Exception):
    """The item cannot run without a CUDA device (expected under --smoke, a failure on a GPU)."""


def row(
    figure: str,
    value: float | None,
    unit: str = "",
    target: str | None = None,
    met: bool | None = None,
) -> dict[str, Any]:
    """One line of the results table: a figure, its value and unit, and its target if any."""
    return {"figure": figure, "value": value, "unit": unit, "target": target, "met": met}


def show(value: float | None, unit: str) -> str:
    """A figure as the table prints it."""
    if value is None:
        return "-"
    if unit == "%":
        return f"{100 * value:.1f}%"
    if unit == "x":
        return f"{value:.2f}x"
    if unit in ("tok/s", "tests") or abs(value) >= 1000:
        return f"{value:,.0f}" + (f" {unit}" if unit != "tests" else "")
    if unit == "rel":
        return f"{value:.1e}"
    return f"{value:.3g} {unit}".rstrip()
