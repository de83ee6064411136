"""The error raised for problems in a user's data, and the integer check of builders' counts."""

from __future__ import annotations

from typing import Any

from ..config import UserError


class DataError(UserError):
    """A problem with a dataset the user can fix: a malformed file, a missing column, no samples."""


def check_count(where: str, name: str, value: Any, minimum: int = 1) -> None:
    """A DataError unless `value` (argument `name` of `where`) is an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
