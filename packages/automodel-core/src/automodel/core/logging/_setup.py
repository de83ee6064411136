"""setup_logging: human-readable log lines from rank 0, warnings and errors from every rank."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from ._rank import global_rank

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_MARK = "_automodel_handler"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes, not the one at set-up: a stream
    replaced later (redirected, captured, then closed) neither loses records nor fails."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # no fixed stream

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr


def setup_logging(
    level: int | str = "INFO", rank: int | None = None, stream: TextIO | None = None
) -> None:
    """Send log records to stderr with a timestamped format; ranks other than 0 show WARNING+.

    Calling it again replaces the handler it installed before; other handlers are left alone.
    """
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else int(level)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
    rank = global_rank(rank)
    if rank != 0:
        numeric = max(numeric, logging.WARNING)
    prefix = "" if rank == 0 else f"[rank {rank}] "
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(logging.Formatter(prefix + LOG_FORMAT, DATE_FORMAT))
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)


# Loggers of other libraries that repeat a deprecation notice on every launch, which says
# nothing about the run: torch's pytree module warns about torchao's register_constant calls,
# made when transformers looks for quantizers.
UPSTREAM_NOISE = ("torch.utils._pytree",)


def quiet_upstream_noise(debug: bool = False) -> None:
    """Keep the known per-launch deprecation notices of `UPSTREAM_NOISE` out of the console,
    unless `debug` (then every record shows). Errors always show."""
    for name in UPSTREAM_NOISE:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.ERROR)
