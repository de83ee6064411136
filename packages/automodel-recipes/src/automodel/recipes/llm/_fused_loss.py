"""The recipes' use of the fused loss: which layouts it runs under, and the module to
parallelize (`automodel.core.losses.FusedLossModel`, which puts it inside the forward that
FSDP2 and DDP wrap)."""

from __future__ import annotations

from typing import Any

from torch import nn

from automodel.core.config import ConfigNode
from automodel.core.losses import FusedLinearCrossEntropy, FusedLossModel

from .._errors import config_problem
from .._sections import Distributed


def is_fused(loss_fn: Any) -> bool:
    """Whether the loss takes hidden states and the LM head rather than logits."""
    return isinstance(loss_fn, FusedLinearCrossEntropy)


def check_fused_loss(cfg: ConfigNode, loss_fn: Any, distributed: Distributed) -> None:
    """Refuse layouts the fused loss cannot run under. A head sharded over the vocabulary
    (tensor parallel) computes each rank's share of the logits; with pipeline stages the last
    stage computes it (`DecoderStage.head_loss`); pipeline stages with tensor parallelism
    are not wired for it yet."""
    if not is_fused(loss_fn):
        return
    if distributed.tp_size > 1 and distributed.pp_size > 1:
        raise config_problem(
            cfg,
            "loss_fn",
            "the fused loss in pipeline stages with tp_size > 1 is not supported yet: use "
            "MaskedCrossEntropy, or tp_size 1",
        )


def with_fused_loss(model: nn.Module, loss_fn: Any) -> nn.Module:
    """The module to parallelize and call: `model` itself, or wrapped with the fused loss."""
    return FusedLossModel(model, loss_fn) if is_fused(loss_fn) else model
