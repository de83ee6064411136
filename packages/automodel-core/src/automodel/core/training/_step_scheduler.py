"""StepScheduler: groups micro-batches into optimizer steps and says when to log, validate, save."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from automodel.core.config import ConfigError, Problem

from ._batch_math import check_batch_math, is_positive_int

_STATE_KEYS = ("step", "epoch", "micro_batches_in_epoch")


def _set_epoch(dataloader: Any, epoch: int) -> None:
    for obj in (dataloader, getattr(dataloader, "sampler", None)):
        if callable(getattr(obj, "set_epoch", None)):
            obj.set_epoch(epoch)
            return


class StepScheduler:
    """Counts optimizer steps and epochs over a dataloader of micro-batches (one per rank).

    ```python
    for micro_batches in step_scheduler.steps(dataloader):  # grad_acc_steps micro-batches
        for batch in micro_batches:
            loss_fn(model(batch)).backward()
        optimizer.step(); lr_scheduler.step(); optimizer.zero_grad()
        if step_scheduler.is_ckpt_step:
            save(step_scheduler.state_dict())
    ```

    - `step` is the number of optimizer steps done, counting the one being yielded (1 in the
      first loop body), so `state_dict()` taken in the body describes the state after that step.
    - `epoch` is 0-based; `micro_batches_in_epoch` counts the micro-batches consumed in it.
    - An epoch's trailing micro-batches that do not fill a whole step are dropped.
    - Training stops after `max_steps` steps or `num_epochs` epochs, whichever comes first
      (`num_epochs=None`: only `max_steps`). At least one of the two must be set.
    - Before each epoch, `set_epoch(epoch)` is called on the dataloader, or else on its
      `sampler`, when it has one (as `DistributedSampler` needs for a new shuffle per epoch);
      not before an epoch resumed mid-way, whose position the dataloader restored itself.
    - Resuming: `load_state_dict()` restores the counters, but the dataloader must restore its
      own position (e.g. torchdata's `StatefulDataLoader`); the scheduler does not skip batches.
    - `is_*_step` flags are plain `step % every == 0` tests about the step just yielded;
      `is_last_step` is True for the final step: `step == max_steps`, or the last full step of
      the last epoch when `len(dataloader)` is known.
    """

    def __init__(
        self,
        global_batch_size: int,
        local_batch_size: int,
        dp_size: int = 1,
        grad_acc_steps: int | None = None,
        max_steps: int | None = None,
        num_epochs: int | None = 1,
        val_every_steps: int | None = None,
        ckpt_every_steps: int | None = None,
        log_every_steps: int | None = 1,
    ):
        self.grad_acc_steps = check_batch_math(
            global_batch_size, local_batch_size, dp_size, grad_acc_steps
        )
        optional = {
            "max_steps": max_steps,
            "num_epochs": num_epochs,
            "val_every_steps": val_every_steps,
            "ckpt_every_steps": ckpt_every_steps,
            "log_every_steps": log_every_steps,
        }
        problems = [
            Problem("step_scheduler", f"{name} must be an integer >= 1 or null, got {value!r}")
            for name, value in optional.items()
            if value is not None and not is_positive_int(value)
        ]
        if max_steps is None and num_epochs is None:
            problems.append(Problem("step_scheduler", "set max_steps, num_epochs, or both"))
        if problems:
            raise ConfigError(problems)
        self.global_batch_size = global_batch_size
        self.local_batch_size = local_batch_size
        self.dp_size = dp_size
        self.max_steps = max_steps
        self.num_epochs = num_epochs
        self.val_every_steps = val_every_steps
        self.ckpt_every_steps = ckpt_every_steps
        self.log_every_steps = log_every_steps
        self.step = 0
        self.epoch = 0
        self.micro_batches_in_epoch = 0
        self._epoch_len: int | None = None

    # -- iteration -------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """Whether training has reached `max_steps` or finished `num_epochs`."""
        if self.max_steps is not None and self.step >= self.max_steps:
            return True
        return self.num_epochs is not None and self.epoch >= self.num_epochs

    def steps(self, dataloader: Iterable[Any]) -> Iterator[list[Any]]:
        """Yield one list of `grad_acc_steps` micro-batches per optimizer step until done."""
        try:
            self._epoch_len = len(dataloader)  # type: ignore[arg-type]
        except TypeError:
            self._epoch_len = None
        while not self.done:
            fresh_epoch = self.micro_batches_in_epoch == 0
            if fresh_epoch:  # a resumed epoch keeps the position its dataloader restored
                _set_epoch(dataloader, self.epoch)
            stepped = False
            group: list[Any] = []
            for micro_batch in dataloader:
                group.append(micro_batch)
                if len(group) < self.grad_acc_steps:
                    continue
                self.step += 1
                self.micro_batches_in_epoch += len(group)
                stepped = True
                yield group
                group = []
                if self.max_steps is not None and self.step >= self.max_steps:
                    return
            if fresh_epoch and not stepped:
                raise ValueError(
                    f"the dataloader yielded {len(group)} micro-batches in epoch {self.epoch}, "
                    f"fewer than grad_acc_steps ({self.grad_acc_steps}) for one optimizer step"
                )
            self.epoch += 1
            self.micro_batches_in_epoch = 0

    def total_steps(self, micro_batches_per_epoch: int | None = None) -> int:
        """How many optimizer steps the run will take (for the LR schedule's `total_steps`)."""
        candidates = [] if self.max_steps is None else [self.max_steps]
        if self.num_epochs is not None and micro_batches_per_epoch is not None:
            candidates.append(self.num_epochs * (micro_batches_per_epoch // self.grad_acc_steps))
        if not candidates:
            raise ValueError(
                "total_steps needs max_steps or micro_batches_per_epoch (len of the dataloader)"
            )
        return min(candidates)

    # -- what to do at this step -----------------------------------------------------------
    def _every(self, every: int | None) -> bool:
        return every is not None and self.step > 0 and self.step % every == 0

    @property
    def is_log_step(self) -> bool:
        """Whether to log metrics after the current step."""
        return self._every(self.log_every_steps)

    @property
    def is_val_step(self) -> bool:
        """Whether to run validation after the current step."""
        return self._every(self.val_every_steps)

    @property
    def is_ckpt_step(self) -> bool:
        """Whether to save a checkpoint after the current step."""
        return self._every(self.ckpt_every_steps)

    @property
    def is_last_step(self) -> bool:
        """Whether the current step is the final one of the run."""
        if self.step == 0:
            return False
        if self.max_steps is not None and self.step >= self.max_steps:
            return True
        return (
            self.num_epochs is not None
            and self._epoch_len is not None
            and self.epoch == self.num_epochs - 1
            and self.micro_batches_in_epoch + self.grad_acc_steps > self._epoch_len
        )

    # -- resume ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Step, epoch and micro-batch position in the epoch (with its batch shape), to resume."""
        state = {key: int(getattr(self, key)) for key in _STATE_KEYS}
        return {**state, "local_batch_size": self.local_batch_size, "dp_size": self.dp_size}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Restore the counters saved by `state_dict()`."""
        missing = [key for key in _STATE_KEYS if key not in state_dict]
        if missing:
            raise ValueError(f"step scheduler state is missing {', '.join(missing)}")
        for key in _STATE_KEYS:
            value = int(state_dict[key])
            if value < 0:
                raise ValueError(f"step scheduler state: {key} must be >= 0, got {value}")
            setattr(self, key, value)
        # Saved with another data-parallel size or micro-batch: the same samples of the epoch,
        # counted in this run's micro-batches.
        saved_local = int(state_dict.get("local_batch_size", self.local_batch_size))
        saved_dp = int(state_dict.get("dp_size", self.dp_size))
        samples = self.micro_batches_in_epoch * saved_local * saved_dp
        per_micro_batch = self.local_batch_size * self.dp_size
        if samples % per_micro_batch:
            raise ValueError(
                f"step scheduler state: {samples} samples into epoch {self.epoch} (saved with "
                f"local_batch_size {saved_local} on {saved_dp} data-parallel rank(s)) is not a "
                f"whole number of micro-batches of {self.local_batch_size} on {self.dp_size}"
            )
        self.micro_batches_in_epoch = samples // per_micro_batch

    def __repr__(self) -> str:
        return (
            f"StepScheduler(step={self.step}, epoch={self.epoch}, "
            f"micro_batches_in_epoch={self.micro_batches_in_epoch}, "
            f"grad_acc_steps={self.grad_acc_steps}, max_steps={self.max_steps}, "
            f"num_epochs={self.num_epochs})"
        )
