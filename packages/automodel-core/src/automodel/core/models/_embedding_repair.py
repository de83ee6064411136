"""Repair input-embedding rows a checkpoint left near zero, from the LM head's rows.

Some checkpoints carry token rows that were never trained into the input embedding (reserved or
added tokens, rows zeroed by a conversion). When such a token first shows up in fine-tuning, a
near-zero embedding after the first norm layer can give huge gradients. A damaged row (L2 norm
not finite, or at most ``min_norm``) takes the direction of the same token's row of the output
embedding, scaled to the root-mean-square norm of the healthy input rows: the token keeps a
direction of its own, at the magnitude the model expects. The embedding's ``padding_idx`` row
(zero by design in many models, and never trained) is left as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EmbeddingRepair:
    """What `repair_embedding_rows` did: the repaired token ids (empty: nothing to repair), the
    smallest finite input row norm before, and the norm the repaired rows got (None when none)."""

    row_ids: tuple[int, ...]
    min_norm_before: float
    target_norm: float | None


@torch.no_grad()
def repair_embedding_rows(
    model: nn.Module, min_norm: float = 1e-6, max_rows: int = 256
) -> EmbeddingRepair:
    """Repair the input-embedding rows of a whole (unsharded) model whose norm is not finite or
    at most `min_norm`, in place; refuse (ValueError) to touch more than `max_rows` of them, a
    sign of a mismatched checkpoint rather than a few stray rows."""
    if not (math.isfinite(min_norm) and min_norm >= 0):
        raise ValueError(f"min_norm must be a finite number >= 0, got {min_norm!r}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive integer, got {max_rows!r}")
    inputs = _weight(model, "get_input_embeddings", "input embedding")
    if inputs.is_meta:
        raise ValueError(
            "the input embedding is on the meta device (built without its weights, e.g. "
            "init_device: meta): rows can only be repaired once the checkpoint's weights are in"
        )
    norms = _row_norms(inputs)
    considered = torch.ones_like(norms, dtype=torch.bool)
    padding = getattr(model.get_input_embeddings(), "padding_idx", None)
    if padding is not None:
        considered[padding] = False
    damaged = considered & (~torch.isfinite(norms) | (norms <= min_norm))
    healthy = considered & ~damaged
    finite = norms[considered & torch.isfinite(norms)]
    lowest = float(finite.min()) if finite.numel() else math.nan
    ids = tuple(int(i) for i in damaged.nonzero().flatten())
    if not ids:
        return EmbeddingRepair((), lowest, None)
    if len(ids) > max_rows:
        raise ValueError(
            f"{len(ids)} input-embedding rows have a norm <= {min_norm:g}, more than max_rows "
            f"{max_rows}: the checkpoint looks mismatched or damaged, so nothing was changed"
        )
    outputs = _weight(model, "get_output_embeddings", "output embedding (LM head)")
    if outputs is inputs:
        raise ValueError(
            "the LM head is tied to the input embedding, so its rows are the damaged ones: "
            f"nothing to repair rows {list(ids)} from"
        )
    if outputs.shape != inputs.shape:
        raise ValueError(
            f"the input embedding is {tuple(inputs.shape)} but the output embedding is "
            f"{tuple(outputs.shape)}: rows cannot be repaired one from the other"
        )
    sources = _row_norms(outputs)[damaged]
    unusable = [
        i
        for i, n in zip(ids, sources.tolist(), strict=True)
        if not (math.isfinite(n) and n > min_norm)
    ]
    if unusable:
        raise ValueError(f"the output-embedding rows of tokens {unusable} are damaged too")
    if not healthy.any():
        raise ValueError("no healthy input-embedding row to take the norm from")
    target = math.sqrt(float(norms[healthy].square().mean()))
    index = damaged.nonzero().flatten().to(inputs.device)
    rows = outputs.index_select(0, index.to(outputs.device)).to(inputs.device, torch.float64)
    rows *= (target / sources).to(rows.device).unsqueeze(1)
    inputs.index_copy_(0, index, rows.to(inputs.dtype))
    return EmbeddingRepair(ids, lowest, target)


def _weight(model: nn.Module, getter: str, what: str) -> torch.Tensor:
    try:
        module = getattr(model, getter)()
    except (AttributeError, NotImplementedError):
        module = None
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"{type(model).__name__} has no {what} matrix")
    return weight


def _row_norms(weight: torch.Tensor, rows_at_once: int = 8192) -> torch.Tensor:
    """Each row's L2 norm in float64, a slice of rows at a time (no float64 copy of the whole
    matrix)."""
    chunks = weight.detach().split(rows_at_once)
    return torch.cat([c.to(torch.float64).norm(dim=1) for c in chunks]).cpu()
