"""A causal LM whose forward returns its fused-linear loss, so FSDP2 and DDP see the LM head.

The fused loss reads the LM head's weight instead of the model's logits. Called from outside
the model's forward, FSDP2 would never gather the root's parameters (embedding, final norm,
head) nor reduce their gradients, and DDP would never prepare its reducer. `FusedLossModel`
runs the decoder and the loss in one forward and is what a strategy parallelizes: FSDP2
shards each decoder block, then this module as the root; DDP wraps it.

A vision-language model's batch (pixel values beside the token ids) runs through its
multimodal base model, which merges the image features into the embeddings, instead of the
text decoder alone. Without labels the forward returns the logits (for validation metrics that
need them), through the same root.
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
        labels: torch.Tensor | None = None,
        num_label_tokens: int | float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of `batch` (model inputs) against `labels` (already shifted), never full logits;
        without `labels`, the logits."""
        text_only = batch.keys() <= _TEXT_INPUTS
        body = self.causal_lm.get_decoder() if text_only else self.causal_lm.base_model
        if body is self.causal_lm:
            raise TypeError(
                f"{type(body).__name__} names no base model (base_model_prefix) to run a "
                "multimodal batch through before the fused loss; use MaskedCrossEntropy"
            )
        hidden = body(**batch, use_cache=False).last_hidden_state
        head = self.causal_lm.get_output_embeddings()
        if labels is None:
            return head(hidden)
        return self.loss_fn(hidden, head.weight, labels, num_label_tokens, head.bias)


# what a text decoder takes; anything else (pixel values, image sizes) is a multimodal batch
_TEXT_INPUTS = {"input_ids", "attention_mask", "position_ids", "inputs_embeds"}
