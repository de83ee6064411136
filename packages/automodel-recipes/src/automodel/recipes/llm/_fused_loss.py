"""The recipes' use of the fused loss: the module to parallelize
(`automodel.core.losses.FusedLossModel`, which puts it inside the forward that FSDP2 and DDP
wrap). It runs under every layout: a vocabulary-sharded head (tensor parallel) computes each
rank's share of the logits, and pipeline stages compute it on the last stage
(`DecoderStage.head_loss`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from automodel.core.losses import FusedLinearCrossEntropy, FusedLossModel


def is_fused(loss_fn: Any) -> bool:
    """Whether the loss takes hidden states and the LM head rather than logits."""
    return isinstance(loss_fn, FusedLinearCrossEntropy)


def with_fused_loss(model: nn.Module, loss_fn: Any) -> nn.Module:
    """The module to parallelize and call: `model` itself, or wrapped with the fused loss."""
    return FusedLossModel(model, loss_fn) if is_fused(loss_fn) else model
