"""Split a model's trainable parameters into weight-decay and no-weight-decay groups."""

from __future__ import annotations

from typing import Any

from torch import nn


def _no_decay_ids(model: nn.Module, decay_embeddings: bool) -> set[int]:
    ids: set[int] = set()
    for module in model.modules():
        name = type(module).__name__
        is_norm = "Norm" in name
        is_embedding = isinstance(module, nn.Embedding) or "Embedding" in name
        if is_norm or (is_embedding and not decay_embeddings):
            ids.update(id(p) for p in module.parameters(recurse=False))
    return ids


def param_groups(
    model: nn.Module, weight_decay: float, *, decay_embeddings: bool = True
) -> list[dict[str, Any]]:
    """Trainable params in two groups: matrices get `weight_decay`; biases, norms (and optionally embeddings) get 0.

    A parameter skips weight decay when it is 1-D (biases, norm scales), when its module's class
    name contains "Norm" (LayerNorm, RMSNorm, ...), or, with `decay_embeddings=False`, when it
    belongs to an `nn.Embedding` (or a module whose class name contains "Embedding").
    Parameters with `requires_grad=False` are left out; tied parameters appear once. Empty groups
    are dropped, so the result can be passed to any `torch.optim` class as `params`.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    no_decay_ids = _no_decay_ids(model, decay_embeddings)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or id(param) in no_decay_ids:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
