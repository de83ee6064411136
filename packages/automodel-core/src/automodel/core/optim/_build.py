"""Build an optimizer from a config section, with weight decay split into param groups."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from automodel.core.config import ConfigNode, instantiate

from ._param_groups import param_groups


def build_optimizer(
    model: nn.Module,
    node: ConfigNode | Mapping[str, Any],
    *,
    decay_embeddings: bool = True,
    defaults: Mapping[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """Instantiate an optimizer section (`_target_: torch.optim.AdamW`, ...) over `param_groups(model)`.

    `weight_decay` is read from the section (default 0.0) and applied per group, so biases and
    norm weights get none; every other key is passed to the `_target_` class unchanged.
    `defaults` are keyword arguments for keys the section does not set (e.g. `fused=True`).
    """
    weight_decay = node.get("weight_decay", 0.0)
    groups = param_groups(model, weight_decay=weight_decay, decay_embeddings=decay_embeddings)
    unset = {k: v for k, v in (defaults or {}).items() if node.get(k) is None}
    return instantiate(node, params=groups, **unset)
