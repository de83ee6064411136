"""Warmup + decay learning-rate schedules: a pure `lr_at` function and the scheduler driving it.

Conventions (the same for every style):

- Steps count optimizer steps from 0. The optimizer's `step` number `s` runs with `lr_at(s)`.
- Warmup is linear and never starts at zero: `lr_at(s) = base_lr * (s + 1) / (warmup_steps + 1)`
  for `s < warmup_steps`, so step 0 gets `base_lr / (warmup_steps + 1)` and step
  `warmup_steps` is the first at `base_lr`.
- The decay runs from `base_lr` at step `warmup_steps` to `min_lr` at step `total_steps`
  (the step after the last one trained, as in most trainers); later steps stay at `min_lr`.
- `min_lr` is an absolute learning rate, not a ratio of `base_lr`.

Styles after warmup:

- `cosine`: half a cosine from `base_lr` to `min_lr`.
- `linear`: a straight line from `base_lr` to `min_lr`.
- `constant`: `base_lr` forever (`min_lr` is not used).
- `wsd` (warmup-stable-decay): `base_lr` until the last `round(decay_fraction * total_steps)`
  steps, then a straight line down to `min_lr` at `total_steps`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

STYLES: tuple[str, ...] = ("cosine", "linear", "constant", "wsd")
DEFAULT_WSD_DECAY_FRACTION = 0.1


def _check_schedule(
    total_steps: int,
    warmup_steps: int,
    style: str,
    min_lr: float,
    decay_fraction: float | None,
) -> None:
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}; got {style!r}")
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if warmup_steps > total_steps:
        raise ValueError(
            f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})"
        )
    if min_lr < 0:
        raise ValueError(f"min_lr must be >= 0, got {min_lr}")
    if decay_fraction is not None:
        if style != "wsd":
            raise ValueError(f"decay_fraction only applies to style 'wsd', not {style!r}")
        if not 0.0 <= decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must be in [0, 1], got {decay_fraction}")
    if style == "wsd":
        decay_steps = _wsd_decay_steps(total_steps, decay_fraction)
        if total_steps - decay_steps < warmup_steps:
            raise ValueError(
                f"wsd: the decay ({decay_steps} steps = decay_fraction x total_steps) overlaps the "
                f"warmup ({warmup_steps} steps) within total_steps {total_steps}; lower "
                "decay_fraction or warmup_steps"
            )


def _wsd_decay_steps(total_steps: int, decay_fraction: float | None) -> int:
    fraction = DEFAULT_WSD_DECAY_FRACTION if decay_fraction is None else decay_fraction
    return round(fraction * total_steps)


def _check_base_lr(base_lr: float, min_lr: float, style: str) -> None:
    if base_lr < 0:
        raise ValueError(f"the optimizer's lr must be >= 0, got {base_lr}")
    if style != "constant" and min_lr > base_lr:
        raise ValueError(f"min_lr ({min_lr}) must not exceed the optimizer's lr ({base_lr})")


def _lr(
    step: int,
    base_lr: float,
    total_steps: int,
    warmup_steps: int,
    style: str,
    min_lr: float,
    decay_fraction: float | None,
) -> float:
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    if style == "constant":
        return base_lr
    if style == "wsd":
        decay_start = total_steps - _wsd_decay_steps(total_steps, decay_fraction)
    else:
        decay_start = warmup_steps
    if step < decay_start:
        return base_lr
    if step >= total_steps:
        return min_lr
    progress = (step - decay_start) / (total_steps - decay_start)
    if style == "cosine":
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr + (min_lr - base_lr) * progress


def lr_at(
    step: int,
    *,
    base_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    style: str = "cosine",
    min_lr: float = 0.0,
    decay_fraction: float | None = None,
) -> float:
    """The learning rate of optimizer step `step` (0-based); see the module docstring for the shape."""
    _check_schedule(total_steps, warmup_steps, style, min_lr, decay_fraction)
    _check_base_lr(base_lr, min_lr, style)
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    return _lr(step, base_lr, total_steps, warmup_steps, style, min_lr, decay_fraction)


class WarmupDecayLR(LRScheduler):
    """A torch `LRScheduler` following `lr_at` for every param group (its `lr` is the `base_lr`).

    `state_dict()` holds the position (`last_epoch`, the number of `step()` calls), the base
    learning rates and the schedule's definition. `load_state_dict()` restores the position and
    writes the resumed learning rate into the optimizer, so the next step uses exactly the LR it
    would have had without the interruption. The rule for the definition on resume:

    - `style`, `warmup_steps`, `min_lr` and `decay_fraction` as saved: the saved definition is
      kept, `total_steps` included, so a run resumed with another `max_steps` continues the
      schedule it started (and stays at `min_lr` past its end);
    - any of them changed: the new definition, with the new `total_steps`, applies from the
      restored step on.
    """

    _STATE_KEYS = ("last_epoch", "_step_count", "base_lrs", "_last_lr")
    _SHAPE_KEYS = ("warmup_steps", "style", "min_lr", "decay_fraction")

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        style: str = "cosine",
        min_lr: float = 0.0,
        decay_fraction: float | None = None,
    ):
        _check_schedule(total_steps, warmup_steps, style, min_lr, decay_fraction)
        for group in optimizer.param_groups:
            _check_base_lr(float(group.get("initial_lr", group["lr"])), min_lr, style)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.style = style
        self.min_lr = min_lr
        self.decay_fraction = decay_fraction
        super().__init__(optimizer)

    def lrs_at(self, step: int) -> list[float]:
        """The learning rate of each param group at optimizer step `step`."""
        return [
            _lr(
                step,
                float(base),
                self.total_steps,
                self.warmup_steps,
                self.style,
                self.min_lr,
                self.decay_fraction,
            )
            for base in self.base_lrs
        ]

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """The learning rates for the current step (`last_epoch`), used by `step()`."""
        return self.lrs_at(self.last_epoch)

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's position: plain ints and floats, safe for `torch.load(weights_only=True)`."""
        state = {key: self.__dict__[key] for key in self._STATE_KEYS}
        state["base_lrs"] = [float(lr) for lr in state["base_lrs"]]
        state["_last_lr"] = [float(lr) for lr in state["_last_lr"]]
        state["schedule"] = self.definition()
        return state

    def definition(self) -> dict[str, Any]:
        """The schedule's length and shape: `total_steps` plus the keys of the resume rule."""
        return {key: getattr(self, key) for key in ("total_steps", *self._SHAPE_KEYS)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the position saved by `state_dict()` and set the optimizer's LRs to match."""
        missing = [key for key in self._STATE_KEYS if key not in state_dict]
        if missing:
            raise ValueError(f"LR scheduler state is missing {', '.join(missing)}")
        for key in self._STATE_KEYS:
            value = state_dict[key]
            self.__dict__[key] = list(value) if isinstance(value, list) else value
        saved = state_dict.get("schedule")
        if saved is not None and all(saved.get(k) == getattr(self, k) for k in self._SHAPE_KEYS):
            self.total_steps = int(saved["total_steps"])
        lrs = self.lrs_at(self.last_epoch)
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = list(lrs)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    style: str = "cosine",
    min_lr: float = 0.0,
    decay_fraction: float | None = None,
) -> WarmupDecayLR:
    """Linear warmup then `style` decay (cosine | linear | constant | wsd) to `min_lr` at `total_steps`."""
    return WarmupDecayLR(
        optimizer,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        style=style,
        min_lr=min_lr,
        decay_fraction=decay_fraction,
    )
