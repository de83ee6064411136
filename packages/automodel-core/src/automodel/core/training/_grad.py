"""Gradient norm and clipping that also work when parameters are DTensors."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.distributed.tensor import DTensor


def _mesh_of(tensor: torch.Tensor) -> object:
    return tensor.device_mesh if isinstance(tensor, DTensor) else None


def clip_grad_norm(
    parameters: Iterable[torch.Tensor] | torch.Tensor,
    max_norm: float | None,
    norm_type: float = 2.0,
) -> torch.Tensor:
    """Return the total gradient norm; scale gradients down to `max_norm` unless it is None.

    With sharded (DTensor) gradients the norm is reduced across ranks first, so every rank
    must call this together. Gradients on different meshes (FSDP2 + tensor parallel puts
    the tensor-parallel weights on a 2-D mesh and the rest on the data-parallel one) are
    normed per mesh and combined. A non-finite norm is returned as is (the scaled gradients
    are then not finite either), so the caller can detect it and skip the optimizer step.
    """
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    by_mesh: dict[object, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_mesh.setdefault(_mesh_of(p.grad), []).append(p)
    if not by_mesh:
        return torch.tensor(0.0)
    norms = []
    for group in by_mesh.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in group], norm_type=norm_type)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    device = norms[0].device
    norms = [n.to(device) for n in norms]
    if len(norms) == 1:
        total_norm = norms[0]
    elif math.isinf(norm_type):
        total_norm = torch.stack(norms).max()
    else:
        total_norm = torch.stack(norms).pow(norm_type).sum().pow(1.0 / norm_type)
    if max_norm is not None:
        for group in by_mesh.values():
            clip_norm = total_norm.to(group[0].grad.device)
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, clip_norm)
    return total_norm
