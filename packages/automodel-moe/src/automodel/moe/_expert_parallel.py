"""Expert parallelism: each rank of an `ep` group keeps E / ep_size experts of every MoE block."""

from __future__ import annotations

from torch import nn

from automodel.moe._ep_dispatch import AllToAllDispatcher, Group
from automodel.moe._experts import GroupedExperts


def shard_experts(model: nn.Module, group: Group) -> list[str]:
    """Keep this rank's contiguous share of every ``GroupedExperts``; tokens go by all_to_all.

    ``group`` is the expert-parallel process group (or a 1-D mesh); rank r of it keeps experts
    ``[r * E / W, (r + 1) * E / W)``. Call it on every rank with identical weights, after
    ``patch_hf_moe`` and before the optimizer is built. The routers and everything else stay
    whole. Each expert lives on one rank and receives the tokens of all ranks, so its gradient
    already sums the whole group's tokens: no gradient reduction over ``group`` is needed
    (a data-parallel average over the same ranks must leave the expert weights out).
    Returns the names of the sharded modules.
    """
    sharded = []
    for name, experts in model.named_modules():
        if not isinstance(experts, GroupedExperts):
            continue
        if experts.dispatcher is not None:
            raise ValueError(f"{name or type(model).__name__} is already expert-parallel")
        dispatcher = AllToAllDispatcher(group, experts.num_experts)
        local = slice(dispatcher.local_experts.start, dispatcher.local_experts.stop)
        for weight_name in ("gate_up_proj" if experts.config.gated else "up_proj", "down_proj"):
            weight = getattr(experts, weight_name)
            kept = nn.Parameter(weight.detach()[local].clone(), requires_grad=weight.requires_grad)
            setattr(experts, weight_name, kept)
        experts.dispatcher = dispatcher
        sharded.append(name)
    if not sharded:
        raise ValueError(
            f"{type(model).__name__} has no GroupedExperts to shard; call patch_hf_moe first"
        )
    return sharded
