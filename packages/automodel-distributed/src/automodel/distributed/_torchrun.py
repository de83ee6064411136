"""`python -m automodel.distributed._torchrun ARGS`: torchrun, with a one-line failure report.

torch's own entry point answers a failed worker with a traceback of the launcher and a
ChildFailedError report, after the worker has already printed its error (for a config
mistake, one clear line). This runs the same launcher, replaces that report with a short
summary and exits with the first failure's exit code (2 for a config error), so the
caller sees the worker's status instead of torchrun's generic 1. The `automodel` CLI
launches it by name (it never imports torch itself).
"""

from __future__ import annotations

import signal
import sys


def _exit_code(exitcode: int) -> int:
    """A worker's status as a shell reports it: 128 + N for a process killed by signal N."""
    return 128 - exitcode if exitcode < 0 else exitcode


def _how(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with `argv`; 0, or the exit code of the first process that failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as error:
        first_rank, first = error.get_first_failure()
        failed = ", ".join(
            f"rank {rank} ({_how(failure.exitcode)})"
            for rank, failure in sorted(error.failures.items())
        )
        print(
            f"automodel: process(es) failed: {failed}; the first was rank {first_rank}, its "
            "own error is above",
            file=sys.stderr,
        )
        return _exit_code(first.exitcode) or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
