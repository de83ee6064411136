"""The error raised for problems in a user's data."""

from __future__ import annotations

from ..config import UserError


class DataError(UserError):
    """A problem with a dataset the user can fix: a malformed file, a missing column, no samples."""
