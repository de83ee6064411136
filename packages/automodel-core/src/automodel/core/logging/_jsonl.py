"""JsonlWriter: one JSON object per line, flushed per line, truncated back on resume."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from ._rank import global_rank

logger = logging.getLogger(__name__)


class JsonlWriter:
    """Append metrics rows (dicts or objects with `to_dict()`) to a JSONL file from rank 0 only.

    `state_dict()` records the rows and bytes written; `load_state_dict()` truncates the file back
    to that offset so that a resumed run writes the same file as an uninterrupted one.
    """

    def __init__(self, path: str | os.PathLike[str], *, rank: int | None = None):
        self.path = Path(path)
        self.enabled = global_rank(rank) == 0
        self._file: BinaryIO | None = None
        self.rows = 0
        self.offset = 0
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
            self.offset = self._file.seek(0, os.SEEK_END)
            if self.offset:
                self.rows = self.path.read_bytes().count(b"\n")

    def write(self, row: Mapping[str, Any] | Any) -> None:
        """Append one row as a JSON line and flush it."""
        if not self.enabled:
            return
        if self._file is None:
            raise ValueError(f"JsonlWriter({self.path}) is closed")
        data = row.to_dict() if hasattr(row, "to_dict") else dict(row)
        line = (json.dumps(data, default=_plain, allow_nan=True) + "\n").encode()
        self._file.write(line)
        self._file.flush()
        self.rows += 1
        self.offset += len(line)

    def state_dict(self) -> dict[str, int]:
        """The rows and bytes written so far."""
        return {"rows": self.rows, "offset": self.offset}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Truncate the file back to a saved offset, dropping rows written after that state."""
        if not self.enabled or self._file is None:
            return
        offset, rows = int(state["offset"]), int(state["rows"])
        self._file.flush()
        size = self._file.seek(0, os.SEEK_END)
        if size < offset:
            logger.warning(
                "%s is shorter (%d bytes) than when it was checkpointed (%d bytes); appending "
                "after its current end",
                self.path,
                size,
                offset,
            )
            self.offset, self.rows = size, self.path.read_bytes().count(b"\n")
            return
        if size > offset:
            logger.info("truncating %s to %d rows written before the checkpoint", self.path, rows)
            self._file.truncate(offset)
        self.offset, self.rows = offset, rows

    def close(self) -> None:
        """Flush and close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(value: Any) -> Any:
    """JSON fallback for tensors, numpy values and paths: their plain Python value."""
    if hasattr(value, "tolist"):
        return value.tolist()  # a 0-d tensor or numpy scalar gives a number
    return str(value)
