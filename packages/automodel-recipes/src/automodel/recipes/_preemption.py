"""Preemption: turn SIGTERM / SIGUSR1 into a request to save and stop after the current step."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from automodel.core.config import ConfigError, Problem
from automodel.distributed import all_reduce_sum

log = logging.getLogger("automodel.recipes")


class PreemptionWatcher:
    """Catches the given signals while installed; `requested` says one arrived."""

    def __init__(self, signal_names: tuple[str, ...]):
        self.signals = [_signal(name) for name in signal_names]
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Replace the handlers (main thread only; elsewhere preemption is not watched)."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("not on the main thread: preemption signals are not handled")
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint after this step, then exiting", self.received)

    @property
    def requested(self) -> bool:
        """Whether a preemption signal arrived at this process."""
        return self.received is not None

    def agreed(self, group: Any = None) -> bool:
        """Whether a signal arrived at any process of `group` (default: all); a collective: every
        rank calls it each step.

        Signals reach the processes at different moments; a rank that stopped alone would wait
        forever for the others in the checkpoint's collectives.
        """
        # a deliberate host sync, once per step
        return all_reduce_sum(int(self.requested), group) > 0

    def uninstall(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _signal(name: str) -> int:
    try:
        return int(getattr(signal, name if name.startswith("SIG") else f"SIG{name}"))
    except AttributeError:
        raise ConfigError(
            Problem(
                "checkpoint.preempt_signals",
                f"{name!r} is not a signal on this platform (e.g. SIGTERM, SIGUSR1)",
            )
        ) from None
