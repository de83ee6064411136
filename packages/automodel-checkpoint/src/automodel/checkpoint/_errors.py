"""Exceptions raised by automodel.checkpoint."""

from __future__ import annotations


class CheckpointError(Exception):
    """A checkpoint cannot be written or read: missing, corrupt or inconsistent files."""
