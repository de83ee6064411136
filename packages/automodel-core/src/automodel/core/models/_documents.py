"""Whether a model keeps the documents of one row apart by their `position_ids`."""

from __future__ import annotations

import sys

from torch import nn

# Layer kinds that attend within the causal mask; any other kind (linear attention, Mamba,
# convolutions) carries a state along the sequence, from one document into the next.
_ATTENTION_LAYERS = {"full_attention", "sliding_attention", "chunked_attention"}
_MASK_BUILDERS = ("create_causal_mask", "create_sliding_window_causal_mask")


def document_masking_problem(model: nn.Module, rows: int = 1) -> str | None:
    """Why `model` would let documents that share a row (`position_ids` restarting at 0 for
    each, no attention mask, `use_cache=False`) see each other; None where it keeps them apart.

    transformers builds a per-document causal mask from such `position_ids` in its
    `masking_utils` (eager, sdpa, flex), and flash attention runs one variable-length sequence
    per document, but only in a batch of one row. `rows`: rows per forward. What is checked: the
    model's code builds its masks there, its attention implementation is one those masks serve,
    and every layer is an attention layer.
    """
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    name = type(model).__name__
    modules = {type(m).__module__ for m in (model, getattr(model, "base_model", model))}
    if not any(hasattr(sys.modules.get(m), b) for m in modules for b in _MASK_BUILDERS):
        return (
            f"{name} does not build its attention masks with transformers' masking_utils, "
            "which is what finds the documents from their position_ids"
        )
    config = getattr(model, "config", None)
    layers = set(getattr(config, "layer_types", None) or ()) - _ATTENTION_LAYERS
    if layers:
        return (
            f"{name} has {', '.join(sorted(map(str, layers)))} layers, which carry a state along "
            "the sequence from one document into the next"
        )
    attention = getattr(config, "_attn_implementation", None)
    if attention not in ALL_MASK_ATTENTION_FUNCTIONS:
        return (
            f"its attention implementation {attention!r} gets no mask from transformers, so "
            "nothing keeps the documents apart; use sdpa, eager, flex_attention or flash attention"
        )
    if attention.startswith("flash") and rows > 1:
        return (
            f"with {attention}, transformers finds the documents from position_ids only in a "
            f"batch of one row, and these batches have {rows}"
        )
    return None
