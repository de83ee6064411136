"""Where a run's numbers go: log lines, progress bars, training/validation.jsonl and W&B."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from automodel.core.config import ConfigNode, redacted_data
from automodel.core.logging import JsonlWriter, ProgressBar, build_metric_loggers
from automodel.core.training import MetricsSample

from ._pending import PendingStep, read_back
from ._sections import Logging

log = logging.getLogger("automodel.recipes")


class Telemetry:
    """Rank-0 reporting of training and validation metrics for one run directory."""

    def __init__(
        self,
        run_dir: Path,
        section: Logging,
        cfg: ConfigNode,
        total_steps: int,
        listeners: Iterable[Callable[[MetricsSample], Any]] = (),
        started: float | None = None,
    ):
        """`started`: when the run began (`time.monotonic()`, default now), for `elapsed_s`."""
        self.section = section
        self.started = time.monotonic() if started is None else started
        self.elapsed_before = 0.0  # the run's time before this process (a resumed run)
        self.resumed_at: int | None = None  # the step this process resumed the run at
        # Called with every training step's sample on every rank (benchmarks, early stopping),
        # in order, at the log step that reads them back.
        self.listeners = list(listeners)
        self.pending: list[PendingStep | MetricsSample] = []  # steps not yet written
        self.train_log = JsonlWriter(run_dir / "training.jsonl")
        self.val_log = JsonlWriter(run_dir / "validation.jsonl")
        self.loggers = build_metric_loggers(cfg, run_config=redacted_data(cfg))
        self.bar = ProgressBar(total=total_steps, desc="train", enabled=section.progress)

    def resume_at(self, step: int) -> None:
        """Start the training progress bar at a resumed step."""
        self.resumed_at = step
        self.bar = ProgressBar(
            total=self.bar.total, desc="train", initial=step, enabled=self.section.progress
        )

    def state_dict(self) -> dict[str, Any]:
        """The JSONL offsets, so a resumed run neither repeats nor loses rows, and the run's
        time so far, so `elapsed_s` goes on counting from it; pending steps are written first."""
        self.flush()
        return {
            "training": self.train_log.state_dict(),
            "validation": self.val_log.state_dict(),
            "elapsed_s": self.elapsed(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Truncate the JSONL files back to the checkpointed offsets."""
        self.train_log.load_state_dict(state["training"])
        self.val_log.load_state_dict(state["validation"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))  # older checkpoints lack it

    def elapsed(self) -> float:
        """Seconds the run has taken, over all its attempts up to the restored checkpoint."""
        return self.elapsed_before + time.monotonic() - self.started

    def _row(self, sample: MetricsSample) -> dict[str, Any]:
        """The sample plus wall time: `time` (Unix seconds) and `elapsed_s` since the start."""
        return {
            **sample.to_dict(),
            "time": round(time.time(), 3),
            "elapsed_s": round(self.elapsed(), 3),
        }

    def log_train(self, step: PendingStep | MetricsSample, show: bool, write: bool = False) -> None:
        """Record one optimizer step; at `show` (a log step) or `write` (e.g. before a save)
        write every step recorded since the last time; `show` prints this one's log line.

        A PendingStep's numbers are still on the device: they are read back here, every
        pending step's at once, only then, so the steps between never wait.
        """
        self.pending.append(step)
        self.bar.update(1)
        if show or write:
            self.flush(show=show)

    def flush(self, show: bool = False) -> None:
        """Write the rows of the pending steps (reading them back from the device); `show`
        prints the last one's log line. Every rank calls it at the same steps (a collective
        with MoE load metrics)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        samples = pending if isinstance(pending[0], MetricsSample) else read_back(pending)
        for sample in samples:
            self.train_log.write(self._row(sample))
            for logger in self.loggers:
                logger.log(sample.to_dict(), split="train")
        self.bar.update(0, loss=f"{samples[-1].loss:.4f}")
        if show:
            log.info("train %s", samples[-1].format())
        for sample in samples:  # last: one may stop the run, after its rows are written
            for listener in self.listeners:
                listener(sample)

    def log_validation(self, sample: MetricsSample) -> None:
        """Record one validation pass and print it."""
        self.val_log.write(self._row(sample))
        for logger in self.loggers:
            logger.log(sample.to_dict(), split="val")
        shown = "".join(
            f", {name} {value:.4f}" for name, value in sample.extra.items() if value is not None
        )
        log.info("validation step %d: loss %.4f%s", sample.step, sample.loss, shown)

    def progress(self, items: Iterable[Any], desc: str) -> Iterator[Any]:
        """Iterate `items` behind a progress bar."""
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:  # a stream (or its loader) has no length
            total = None
        with ProgressBar(total=total, desc=desc, enabled=self.section.progress) as bar:
            for item in items:
                yield item
                bar.update(1)

    def close(self) -> None:
        """Write the pending steps, then flush and close every sink."""
        try:
            self.flush()
        finally:
            self._close_sinks()

    def _close_sinks(self) -> None:
        self.bar.close()
        self.train_log.close()
        self.val_log.close()
        for logger in self.loggers:
            logger.close()
