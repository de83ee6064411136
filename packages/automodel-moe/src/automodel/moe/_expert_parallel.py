"""Expert parallelism: each rank of an `ep` group keeps E / ep_size experts of every MoE block."""

from __future__ import annotations

import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from automodel.moe._deepep import DeepEPDispatcher, require_deepep
from automodel.moe._ep_dispatch import AllToAllDispatcher, Group, TokenDispatcher
from automodel.moe._experts import GroupedExperts

DISPATCHERS = ("all_to_all", "deepep")  # the token exchanges shard_experts can use


def shard_experts(model: nn.Module, group: Group, dispatcher: str = "all_to_all") -> list[str]:
    """Keep this rank's contiguous share of every ``GroupedExperts``; exchange tokens between them.

    ``group`` is the expert-parallel process group or 1-D device mesh (None: every process);
    rank r of it keeps experts ``[r * E / W, (r + 1) * E / W)``. Call it on every rank with
    identical weights, on the device they will train on, after ``patch_hf_moe`` and before the
    optimizer is built. The routers and everything else stay whole.

    The expert weights become DTensors sharded (``Shard(0)``) over the group: their global
    shape and names are unchanged, so ``get_model_state_dict(full_state_dict=True)``,
    ``save_pretrained`` after ``full_tensor()`` and torch.distributed.checkpoint see every
    expert. Each expert receives the tokens of all ranks, so its gradient already sums the
    whole group's tokens: a data-parallel average over the same ranks must leave these weights
    out (FSDP2 ``ignored_params``; divide their gradients by the data-parallel size yourself
    when the loss is a per-rank mean). Returns the names of the sharded modules.

    ``dispatcher`` moves the tokens: ``"all_to_all"`` (torch.distributed, any backend) or
    ``"deepep"`` (DeepEP's NVLink/RDMA kernels on CUDA, ``automodel-moe[deepep]``; one
    communication buffer shared by every layer).
    """
    if dispatcher not in DISPATCHERS:
        raise ValueError(f"dispatcher must be one of {DISPATCHERS}, got {dispatcher!r}")
    if dispatcher == "deepep":
        require_deepep()  # before any module changes
    from torch.distributed.tensor import DTensor, Shard  # a second to import: on use only

    mesh = None
    first: TokenDispatcher | None = None
    sharded = []
    for name, experts in model.named_modules():
        if not isinstance(experts, GroupedExperts):
            continue
        if experts.dispatcher is not None:
            raise ValueError(f"{name or type(model).__name__} is already expert-parallel")
        if mesh is None:
            mesh = _as_mesh(group, experts.down_proj.device.type)
        exchange = _make_dispatcher(dispatcher, mesh, experts.num_experts, first)
        first = first or exchange
        local = slice(exchange.local_experts.start, exchange.local_experts.stop)
        for weight_name, weight in list(experts.named_parameters(recurse=False)):
            shard = weight.detach()[local].clone()  # experts first: weights and their biases
            kept = DTensor.from_local(shard, mesh, [Shard(0)], run_check=False)
            setattr(experts, weight_name, nn.Parameter(kept, requires_grad=weight.requires_grad))
        experts.dispatcher = exchange
        sharded.append(name)
    if not sharded:
        raise ValueError(
            f"{type(model).__name__} has no GroupedExperts to shard; call patch_hf_moe first"
        )
    return sharded


def _make_dispatcher(
    kind: str, mesh: DeviceMesh, num_experts: int, first: TokenDispatcher | None
) -> TokenDispatcher:
    if kind == "all_to_all":
        return AllToAllDispatcher(mesh, num_experts)
    exchange = DeepEPDispatcher(mesh, num_experts)
    if isinstance(first, DeepEPDispatcher):
        exchange.share_buffer(first)
    return exchange


def _as_mesh(group: Group, device_type: str) -> DeviceMesh:
    """``group`` as a 1-D device mesh (the DTensor weights live on it)."""
    if isinstance(group, DeviceMesh):
        if group.ndim != 1:
            raise ValueError(f"expert parallelism needs a 1-D mesh, got {group.ndim}-D")
        return group
    if group is None:
        group = dist.group.WORLD
    return DeviceMesh.from_group(group, device_type)
