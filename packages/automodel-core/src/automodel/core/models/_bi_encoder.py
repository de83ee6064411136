"""An embedding model over any Hugging Face backbone: pooled, optionally L2-normalised hidden
states of queries and passages, from one shared tower or two."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

POOLINGS = ("mean", "cls", "last")
Pooling = Literal["mean", "cls", "last"]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: Pooling) -> torch.Tensor:
    """One vector per sequence from [batch, seq, dim] hidden states: the mean over real tokens,
    the first token, or the last real token (right or left padding alike)."""
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.bool() * (positions + 1)).argmax(dim=1)  # the last 1 of each row
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {mode!r}")


def bidirectional(model: nn.Module) -> nn.Module:
    """Turn off causal masking of a decoder LM (Llama-, Qwen-style) so every token sees the whole
    sequence, as an embedding model needs: transformers builds a bidirectional mask for configs
    with `is_causal = False`, and the flag is saved in config.json for whoever loads it."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no Hugging Face config to make bidirectional")
    config.is_causal = False
    for module in model.modules():  # attention layers that pass their own flag to SDPA
        if getattr(module, "is_causal", None) is True:
            module.is_causal = False
    return model


class BiEncoder(nn.Module):
    """Queries and passages to embeddings through `query_model` (and `passage_model` when the two
    towers are separate): last hidden states, pooled, then L2-normalised when `normalize`.

    `forward(query, passage)` takes two tokenized batches (dicts of `input_ids`,
    `attention_mask`, ...) and returns their embeddings, so that data parallelism wraps one
    forward per micro-batch; either may be None (search embeds one side at a time).
    """

    def __init__(
        self,
        query_model: nn.Module,
        passage_model: nn.Module | None = None,
        *,
        pooling: Pooling = "mean",
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        for tower in (query_model, passage_model):
            config = getattr(tower, "config", None)
            if getattr(config, "use_cache", None):
                config.use_cache = False  # no key/value cache: nothing is generated
        self.query_model = query_model
        self.passage_model = passage_model  # None: one tower for both
        self.pooling = pooling
        self.normalize = normalize

    def encode(self, batch: dict[str, torch.Tensor], passage: bool = False) -> torch.Tensor:
        """Embeddings [batch, dim] of one tokenized batch, through the passage tower if asked."""
        tower = (
            self.passage_model if passage and self.passage_model is not None else self.query_model
        )
        hidden = tower(**batch).last_hidden_state
        embeddings = pool(hidden, batch["attention_mask"], self.pooling).float()
        return nn.functional.normalize(embeddings, dim=-1) if self.normalize else embeddings

    def forward(
        self,
        query: dict[str, torch.Tensor] | None = None,
        passage: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(query embeddings, passage embeddings); None for a batch not given."""
        queries = self.encode(query) if query is not None else None
        return queries, self.encode(passage, passage=True) if passage is not None else None
