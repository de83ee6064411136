"""ProgressBar: a small, dependency-free progress display for training and validation."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from ._rank import global_rank

_BAR_WIDTH = 20
_TTY_INTERVAL = 0.1  # seconds between in-place redraws


class ProgressBar:
    """Progress on rank 0's stderr: redrawn in place on a TTY, else a line every N% or M seconds.

    Without a TTY (a log file, a batch job) no line follows the previous one (or the start)
    within `quiet_seconds`, so a bar that finishes quickly prints only its final line.

    `total=None` shows a count without percentage; `initial` is where a resumed run starts.
    """

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        *,
        initial: int = 0,
        enabled: bool = True,
        rank: int | None = None,
        stream: TextIO | None = None,
        every_percent: float = 10.0,
        every_seconds: float = 30.0,
        quiet_seconds: float = 5.0,
    ):
        self.total = total
        self.desc = desc
        self.n = initial
        self.postfix: dict[str, Any] = {}
        self.enabled = enabled and global_rank(rank) == 0
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self.enabled and _isatty(self._stream)
        self._every_percent = every_percent
        self._every_seconds = every_seconds
        self._quiet_seconds = quiet_seconds
        self._initial = initial
        self._start = _now()
        self._last_print = self._start
        self._printed_n: int | None = None
        self._bucket = self._bucket_of(initial)
        self._width = 0
        self._closed = False

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by `n` and replace the shown key=value metrics with `postfix` (when given)."""
        self.n += n
        if postfix:
            self.postfix = postfix
        if not self.enabled or self._closed:
            return
        now = _now()
        if self._tty:
            if now - self._last_print >= _TTY_INTERVAL or self._done():
                self._draw(now)
            return
        since = now - self._last_print
        if since < self._quiet_seconds:
            return
        bucket = self._bucket_of(self.n)
        if bucket > self._bucket or since >= self._every_seconds:
            self._bucket = bucket
            self._draw(now)

    def close(self) -> None:
        """Show the final state and end the line."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._printed_n != self.n or self._tty:
            self._draw(_now())
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rendering -----------------------------------------------------------------------------
    def _done(self) -> bool:
        return self.total is not None and self.n >= self.total

    def _bucket_of(self, n: int) -> int:
        if not self.total or self._every_percent <= 0:
            return 0
        return math.floor(100 * n / self.total / self._every_percent)

    def _draw(self, now: float) -> None:
        line = self._format_line(now - self._start)
        if self._tty:
            pad = " " * max(0, self._width - len(line))
            self._stream.write(f"\r{line}{pad}")
            self._width = len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._last_print = now
        self._printed_n = self.n

    def _format_line(self, elapsed: float) -> str:
        """The progress text after `elapsed` seconds."""
        done = self.n - self._initial
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}:" if self.desc else ""]
        if self.total:
            frac = min(1.0, self.n / self.total)
            if self._tty:
                filled = round(frac * _BAR_WIDTH)
                parts.append("|" + "#" * filled + " " * (_BAR_WIDTH - filled) + "|")
            width = 3 if self._tty else 0  # a steady width only matters when redrawn in place
            parts.append(f"{100 * frac:{width}.0f}% {self.n}/{self.total}")
            eta = (self.total - self.n) / rate if rate > 0 else None
            timing = f"{_clock(elapsed)}<{_clock(eta)}"
        else:
            parts.append(str(self.n))
            timing = _clock(elapsed)
        parts.append(f"[{timing}, {rate:.2f} it/s]")
        if self.postfix:
            parts.append(", ".join(f"{k}={_value(v)}" for k, v in self.postfix.items()))
        return " ".join(p for p in parts if p)


def _now() -> float:
    return time.monotonic()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _value(value: Any) -> str:
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float):
        return format(value, ".4g")
    return str(value)
