"""FusedLinearCrossEntropy inside the forward that FSDP2 and DDP wrap, so they see the LM head.

The fused loss reads the LM head's weight instead of the model's logits. Called from outside
the model's forward, FSDP2 would never gather the root's parameters (embedding, final norm,
head) nor reduce their gradients, and DDP would never prepare its reducer. `FusedLossModel`
runs the decoder and the loss in one forward and is what the strategy parallelizes: FSDP2
shards each decoder block, then this module as the root; DDP wraps it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from automodel.core.config import ConfigNode
from automodel.core.losses import FusedLinearCrossEntropy

from .._errors import config_problem
from .._sections import Distributed


class FusedLossModel(nn.Module):
    """A HF causal LM whose forward returns the fused loss of a micro-batch.

    The HF model is held as a submodule, not copied: its parameters keep their names as seen
    from it (checkpoints save the HF model itself), and tied embeddings stay one parameter.
    """

    def __init__(self, model: nn.Module, loss_fn: FusedLinearCrossEntropy):
        super().__init__()
        self.causal_lm = model
        self.loss_fn = loss_fn
        # FSDP2 and activation checkpointing find the decoder blocks by these class names
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        labels: torch.Tensor,
        num_label_tokens: int | float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of `batch` (model inputs) against `labels` (already shifted), never full logits."""
        hidden = self.causal_lm.get_decoder()(**batch, use_cache=False).last_hidden_state
        head = self.causal_lm.get_output_embeddings()
        return self.loss_fn(hidden, head.weight, labels, num_label_tokens, head.bias)


def is_fused(loss_fn: Any) -> bool:
    """Whether the loss takes hidden states and the LM head rather than logits."""
    return isinstance(loss_fn, FusedLinearCrossEntropy)


def check_fused_loss(cfg: ConfigNode, loss_fn: Any, distributed: Distributed) -> None:
    """Refuse layouts the fused loss cannot run under: a vocabulary-sharded head (tensor
    parallel), or a head on the last pipeline stage only (not wired yet)."""
    if not is_fused(loss_fn):
        return
    if distributed.tp_size > 1:
        raise config_problem(
            cfg,
            "loss_fn",
            f"FusedLinearCrossEntropy needs the whole LM head on each rank; tp_size "
            f"{distributed.tp_size} shards it over the vocabulary: use MaskedCrossEntropy",
        )
    if distributed.pp_size > 1:
        raise config_problem(
            cfg,
            "loss_fn",
            "the fused loss with pp_size > 1 is not supported yet: use MaskedCrossEntropy",
        )


def with_fused_loss(model: nn.Module, loss_fn: Any) -> nn.Module:
    """The module to parallelize and call: `model` itself, or wrapped with the fused loss."""
    return FusedLossModel(model, loss_fn) if is_fused(loss_fn) else model
