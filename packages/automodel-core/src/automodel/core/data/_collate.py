"""Batching variable-length samples into padded tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..losses import IGNORE_INDEX
from ._packing import concat_documents


def collate(
    batch: Sequence[Mapping[str, Any]],
    pad_token_id: int = 0,
    *,
    pad_to_multiple_of: int | None = None,
    padding_free: bool = False,
) -> dict[str, torch.Tensor]:
    """Right-pad samples to the longest one (rounded up to a multiple): ids with pad, labels with -100.

    Samples with `position_ids` (packed rows) keep them, padding continuing as its own document
    (0, 1, ...), and get no `attention_mask`: transformers derives the per-document causal mask
    from `position_ids` only when no attention mask is given and the model is called with
    `use_cache=False`. Other samples get an `attention_mask`.

    `padding_free`: the samples end to end in one row of their real tokens (`concat_documents`),
    like a packed row: no compute on padding, and the same per-token losses as the padded batch.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    if padding_free:
        batch = [concat_documents(batch)]
    rows = [
        {k: torch.as_tensor(v, dtype=torch.long) for k, v in sample.items()} for sample in batch
    ]
    longest = max(len(row["input_ids"]) for row in rows)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    packed = "position_ids" in rows[0]

    out: dict[str, list[torch.Tensor]] = {"input_ids": [], "labels": []}
    out["position_ids" if packed else "attention_mask"] = []
    for row in rows:
        n = len(row["input_ids"])
        padding = longest - n
        out["input_ids"].append(_pad(row["input_ids"], padding, pad_token_id))
        out["labels"].append(_pad(row.get("labels", row["input_ids"]), padding, IGNORE_INDEX))
        if packed:
            tail = torch.arange(padding, dtype=torch.long)
            out["position_ids"].append(torch.cat([row["position_ids"], tail]))
        else:
            mask = row.get("attention_mask", torch.ones(n, dtype=torch.long))
            out["attention_mask"].append(_pad(mask, padding, 0))
    return {k: torch.stack(v) for k, v in out.items()}


def _pad(values: torch.Tensor, padding: int, fill: int) -> torch.Tensor:
    if padding <= 0:
        return values
    return torch.cat([values, torch.full((padding,), fill, dtype=values.dtype)])
