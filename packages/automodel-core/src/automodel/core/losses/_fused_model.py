"""A causal LM whose forward returns its fused-linear loss, so FSDP2 and DDP see the LM head.

The fused loss reads the LM head's weight instead of the model's logits. Called from outside
the model's forward, FSDP2 would never gather the root's parameters (embedding, final norm,
head) nor reduce their gradients, and DDP would never prepare its reducer. `FusedLossModel`
runs the decoder and the loss in one forward and is what a strategy parallelizes: FSDP2
shards each decoder block, then this module as the root; DDP wraps it.
"""

from __future__ import annotations

import torch
from torch import nn

from ._fused_linear import FusedLinearCrossEntropy


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
