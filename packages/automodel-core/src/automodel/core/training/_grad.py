"""Gradient norm and clipping that also work when parameters are DTensors."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable

import torch
import torch.distributed as dist


def _is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is a DTensor, without importing torch.distributed.tensor (most of a
    second at start-up): no DTensor can exist before that module is imported."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def _mesh_of(tensor: torch.Tensor) -> object:
    return tensor.device_mesh if _is_dtensor(tensor) else None


def clip_grad_norm(
    parameters: Iterable[torch.Tensor] | torch.Tensor,
    max_norm: float | None,
    norm_type: float = 2.0,
    parts_group: dist.ProcessGroup | None = None,
    copies: Iterable[torch.Tensor] = (),
) -> torch.Tensor:
    """Return the total gradient norm; scale gradients down to `max_norm` unless it is None.

    `parts_group`: ranks that each hold a different part of the model (pipeline stages);
    their norms are combined into the whole model's, so they must all call this together.
    `copies`: parameters among `parameters` whose gradient equals one counted elsewhere (the
    last pipeline stage's copy of a tied embedding): scaled like the others, not counted.

    With sharded (DTensor) gradients the norm is reduced across ranks first, so every rank
    must call this together. Gradients on different meshes (FSDP2 + tensor parallel puts
    the tensor-parallel weights on a 2-D mesh and the rest on the data-parallel one) are
    normed per mesh and combined. A non-finite norm is returned as is (the scaled gradients
    are then not finite either), so the caller can detect it and skip the optimizer step.
    """
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    skip = {id(p) for p in copies}
    by_mesh: dict[object, list[torch.Tensor]] = {}  # what the norm counts
    to_scale: dict[object, list[torch.Tensor]] = {}  # what clipping scales: copies too
    for p in params:
        if p.grad is not None:
            to_scale.setdefault(_mesh_of(p.grad), []).append(p)
            if id(p) not in skip:
                by_mesh.setdefault(_mesh_of(p.grad), []).append(p)
    norms = []
    for group in by_mesh.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in group], norm_type=norm_type)
        norms.append(norm.full_tensor() if _is_dtensor(norm) else norm)
    if parts_group is not None and dist.get_world_size(parts_group) > 1:
        norms = [_combine_parts(norms, norm_type, parts_group)]
    if not norms:
        return torch.tensor(0.0)
    device = norms[0].device
    norms = [n.to(device) for n in norms]
    if len(norms) == 1:
        total_norm = norms[0]
    elif math.isinf(norm_type):
        total_norm = torch.stack(norms).max()
    else:
        total_norm = torch.stack(norms).pow(norm_type).sum().pow(1.0 / norm_type)
    if max_norm is not None:
        for group in to_scale.values():
            clip_norm = total_norm.to(group[0].grad.device)
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, clip_norm)
    return total_norm


def _combine_parts(
    norms: list[torch.Tensor], norm_type: float, group: dist.ProcessGroup
) -> torch.Tensor:
    """The norm over every rank of `group` from each rank's per-mesh `norms` (maybe none)."""
    backend = str(dist.get_backend(group))
    device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else "cpu"
    inf = math.isinf(norm_type)
    local = torch.zeros((), dtype=torch.float32, device=device)
    for norm in norms:
        norm = norm.to(device, torch.float32)
        local = torch.maximum(local, norm) if inf else local + norm.pow(norm_type)
    dist.all_reduce(local, op=dist.ReduceOp.MAX if inf else dist.ReduceOp.SUM, group=group)
    return local if inf else local.pow(1.0 / norm_type)
