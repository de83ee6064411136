"""Signal handling helper recipe."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def wait(argv: list[str]) -> int:
    """Wait for SIGTERM and record that it arrived (checks signal forwarding)."""
    out = Path(os.environ["AUTOMODEL_TEST_OUT"])
    rank = os.environ.get("RANK", "0")
    received: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    (out / f"ready{rank}").write_text("")
    deadline = time.monotonic() + 120
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    (out / f"signal{rank}").write_text(",".join(signal.Signals(s).name for s in received))
    return 0 if received else 3
