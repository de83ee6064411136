"""Rows of several documents (packed rows, padding-free batches): which document each token is
in, from the row's `position_ids`, for the attention masks that keep documents apart."""

from __future__ import annotations

import torch


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Number the documents of each row ``[b, seq]``: a new one wherever a position is not the
    previous one + 1 (ids count from 1; only equality between them matters)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts.long().cumsum(dim=1)
