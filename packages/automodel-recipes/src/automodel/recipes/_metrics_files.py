"""Read a run directory's metrics files (training.jsonl, validation.jsonl) back: no torch.

`automodel plot` and the end-of-run summary both use this; the rows are what `Telemetry`
wrote (`MetricsSample.to_dict()` plus `time` and `elapsed_s`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

TRAINING = "training.jsonl"
VALIDATION = "validation.jsonl"


class MetricsFileError(ValueError):
    """A run directory or one of its metrics files cannot be read (the message says where)."""


def read_rows(path: Path, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per non-blank line.

    A malformed line is a MetricsFileError naming the file and line number, except a last line
    without its newline: the run is still writing it, so it is left out. A missing file is an
    error unless `missing_ok` (then no rows).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return []
        raise MetricsFileError(f"{path} does not exist") from None
    except OSError as e:
        raise MetricsFileError(f"cannot read {path}: {e.strerror or e}") from None
    lines = data.split(b"\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if number == len(lines):  # no newline after it: a row being written right now
                continue
            raise MetricsFileError(f"{path}, line {number}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            kind = type(row).__name__
            raise MetricsFileError(f"{path}, line {number}: a JSON {kind}, not an object (a row)")
        rows.append(row)
    return rows


def number(row: dict[str, Any], key: str) -> float | None:
    """`row[key]` as a finite float, None when absent, null, not a number, NaN or infinite."""
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None
