"""Gradient norm and clipping that also work when parameters are DTensors."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.distributed.tensor import DTensor


def clip_grad_norm(
    parameters: Iterable[torch.Tensor] | torch.Tensor,
    max_norm: float | None,
    norm_type: float = 2.0,
) -> torch.Tensor:
    """Return the total gradient norm; scale gradients down to `max_norm` unless it is None.

    With sharded (DTensor) gradients the norm is reduced across ranks first, so every rank
    must call this together. A non-finite norm is returned as is (the scaled gradients are then
    not finite either), so the caller can detect it and skip the optimizer step.
    """
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total_norm = torch.nn.utils.get_total_norm(grads, norm_type=norm_type)
    if isinstance(total_norm, DTensor):
        total_norm = total_norm.full_tensor()
    if max_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total_norm)
    return total_norm
