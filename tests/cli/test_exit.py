"""Leaving the process after a run: what a normal exit does, without the slow teardown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
import torch  # the fast exit only applies once torch is loaded
from automodel.cli._exit import exit_process

out = Path(sys.argv[1])
if sys.argv[2] == "traced":
    sys.settrace(lambda *args: None)


class WritesAtTeardown:  # holds what it needs: module globals may be gone by then
    def __init__(self, path):
        self.path, self.write = path, Path.write_text

    def __del__(self):
        self.write(self.path, "ran")


held = WritesAtTeardown(out / "teardown")
atexit.register(lambda: (out / "atexit").write_text("ran"))


def late_writer():
    time.sleep(0.3)
    (out / "thread").write_text("ran")


threading.Thread(target=late_writer).start()
# an idle pool worker (a non-daemon thread, as torch.compile's): stopped by threading's exit hook
from concurrent.futures import ThreadPoolExecutor
pool = ThreadPoolExecutor(1)  # held: a collected pool stops its workers by itself
pool.submit(int).result()
print("no newline, still buffered", end="")
exit_process(3)
"""


@pytest.mark.parametrize("mode", ["plain", "traced"])
def test_exit_keeps_status_output_handlers_and_threads(tmp_path: Path, mode: str) -> None:
    """The status, buffered stdout, exit handlers and a non-daemon thread all survive the fast
    exit, an idle thread-pool worker does not keep the process alive, and the interpreter's
    teardown is skipped, except under a tracer (coverage, pdb)."""
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), mode],
        capture_output=True,
        text=True,
        timeout=60,  # a hang here is the bug this guards against
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout == "no newline, still buffered"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "ran"
    assert (tmp_path / "teardown").exists() == (mode == "traced")
