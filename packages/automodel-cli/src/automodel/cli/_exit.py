"""Leaving the process after a command without Python's slow teardown of torch's modules."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn


def exit_process(status: int) -> NoReturn:
    """Exit with `status` as Python would, but skip the interpreter's teardown once torch is loaded.

    Freeing the modules of torch and transformers takes over a second on 2 cores after every run,
    for objects nothing will use again. What a normal exit does first still happens, in the same
    order: threading's exit hooks run and threads that are not daemons are joined, exit handlers
    run (logging, multiprocessing children, experiment trackers), and stdout and stderr are
    flushed. The teardown is kept when
    torch was never imported (nothing to gain) or a tracer or profiler is installed (coverage,
    cProfile and pdb report after the program ends).
    """
    skip = "torch" not in sys.modules or sys.gettrace() is not None or sys.getprofile() is not None
    if skip or threading.current_thread() is not threading.main_thread():
        sys.exit(status)
    # What the interpreter runs first at exit: threading's own exit hooks (they stop idle
    # thread-pool workers, e.g. torch.compile's), then the join of non-daemon threads.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed or replaced
            stream.flush()
    os._exit(status)
