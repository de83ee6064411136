"""Parsing of human-readable byte sizes such as ``"5GB"``."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(size: int | str) -> int:
    """Return ``size`` in bytes: an int, or a string like "5GB", "500MB", "1.5GiB" (KB = 1000)."""
    if isinstance(size, bool):
        raise TypeError(f"size must be an int or a string like '5GB', got {size!r}")
    if isinstance(size, int):
        value = size
    elif isinstance(size, str):
        match = _SIZE_RE.match(size)
        unit = match.group(2).upper() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"invalid size {size!r}: expected a number of bytes or a number followed by "
                f"one of B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"
            )
        value = int(float(match.group(1)) * _UNITS[unit])
    else:
        raise TypeError(f"size must be an int or a string like '5GB', got {type(size).__name__}")
    if value <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return value
