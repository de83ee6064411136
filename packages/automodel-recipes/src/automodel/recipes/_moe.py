"""Mixture-of-Experts in the recipes: the `moe:` section through automodel.moe's public API."""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from automodel.core.config import ConfigNode
from automodel.distributed import all_reduce_sum, submesh
from automodel.moe import (
    DISPATCHERS,
    GroupedExperts,
    moe_aux_loss,
    moe_metrics,
    patch_hf_moe,
    routing_mask,
    shard_experts,
    update_moe_bias,
)

from ._errors import config_problem
from ._moe_nemo import NEMO_BALANCING, applied_section, resolve_nemo_balancing
from ._parallel import Parallel
from ._sections import Moe, read_section

log = logging.getLogger("automodel.recipes")


def read_moe(cfg: ConfigNode, ep_size: int) -> Moe | None:
    """The `moe:` section, or None when the config has none."""
    if "moe" not in cfg:
        return None
    section = read_section(cfg, "moe", Moe)
    if section.balancing is None:  # `none` on the command line arrives as null
        section = Moe(**{**section.__dict__, "balancing": "none"})
    if section.dispatcher not in DISPATCHERS:
        message = f"expected one of {', '.join(DISPATCHERS)}, got {section.dispatcher!r}"
        raise config_problem(cfg, "moe.dispatcher", message)
    if section.dispatcher == "deepep" and ep_size == 1:
        message = (
            "deepep moves tokens between expert-parallel ranks: set distributed.ep_size > 1, "
            "or leave moe.dispatcher at all_to_all"
        )
        raise config_problem(cfg, "moe.dispatcher", message)
    return section


def apply_moe(model: nn.Module, section: Moe, cfg: ConfigNode) -> None:
    """Swap the MoE blocks in place; before LoRA, the restore, sharding and the optimizer."""
    block_options = {k: v for k, v in section.__dict__.items() if k != "dispatcher"}
    if section.balancing == NEMO_BALANCING:  # their model class's balancing for this family
        block_options.update(resolve_nemo_balancing(model, cfg))
    try:
        replaced = patch_hf_moe(model, **block_options)
    except (TypeError, ValueError) as e:
        raise config_problem(cfg, "moe", str(e)) from e
    log.info(
        "moe: %d MoE block(s) use automodel.moe (balancing %s, backend %s)",
        len(replaced), section.balancing, section.backend,
    )  # fmt: skip


class MoeStep:
    """What MoE adds to training: expert parallelism, the aux loss, the bias update, load metrics."""

    def __init__(self, model: nn.Module, section: Moe | None, parallel: Parallel):
        self.model, self.parallel = model, parallel
        self.section = applied_section(model, section)  # `nemo_automodel`: as the blocks were set
        self.experts: list[nn.Parameter] = []  # expert-parallel weights (DTensors on "ep")

    def shard_experts(self, cfg: ConfigNode) -> set[nn.Parameter] | None:
        """With `distributed.ep_size` > 1 keep this rank's experts; the strategy leaves them out.

        Call it on the whole (restored) model, before sharding and the optimizer.
        """
        if self.section is None or self.parallel.ep_size == 1:
            return None
        self.model.to(self.parallel.device)  # the expert DTensors are made on their device
        dispatcher = self.section.dispatcher
        try:
            shard_experts(self.model, submesh(self.parallel.mesh, "ep"), dispatcher)
        except ValueError as e:
            raise config_problem(cfg, "distributed.ep_size", str(e)) from e
        except RuntimeError as e:  # deepep: the extra or CUDA is missing
            raise config_problem(cfg, "moe.dispatcher", str(e)) from e
        for module in self.model.modules():
            if isinstance(module, GroupedExperts):
                self.experts.extend(module.parameters())
        return set(self.experts)

    def reduce_expert_grads(self) -> None:
        """Expert gradients as FSDP2/DDP leave the others: the mean over the dp × cp ranks.

        Each expert already summed the gradient of every rank of its ep group (through the
        all_to_all); its replicas (other ep groups, cp peers) add theirs, then / (dp × cp)
        undoes the scale of the loss, as the strategies' averaging does for every other weight.
        """
        if not self.experts:
            return
        replicas = submesh(self.parallel.mesh, "ep_replicas")
        for param in self.experts:
            if param.grad is None:
                continue
            local = param.grad.to_local()
            if replicas.size() > 1:
                local.copy_(all_reduce_sum(local, replicas.get_group()))
            local.div_(self.parallel.averaged_over)

    def aux_loss(self, micro_batches: int) -> torch.Tensor | None:
        """The last forward's balancing loss, as this micro-batch's share of the step's mean."""
        if self.section is None:
            return None
        aux = moe_aux_loss(self.model)
        return None if aux is None else aux / micro_batches

    def real_tokens_only(self, batch: dict[str, torch.Tensor]) -> contextlib.AbstractContextManager:
        """Inside (forward and backward), the routers count the batch's real tokens, not padding."""
        if self.section is None:
            return contextlib.nullcontext()
        mask = batch.get("attention_mask")  # packed rows have none: every position counts
        return routing_mask(self.model, None if mask is None else mask.to(self.parallel.device))

    def after_optimizer_step(self) -> None:
        """Nudge the routing biases (bias balancing), on the device."""
        if self.section is not None and self.section.balancing == "bias":
            update_moe_bias(self.model, self.parallel.group)  # counts summed over the dp ranks

    def window_metrics(self) -> dict[str, float]:
        """The load metrics of the steps since the last call, over every dp rank (a collective
        that reads the counts back: call it where the host waits anyway, at a log step)."""
        if self.section is None:
            return {}
        return moe_metrics(self.model, reset=True, sum_over=self.parallel.group)

    def forget_load(self) -> None:
        """Drop the load counted by forwards that are not training (validation)."""
        if self.section is not None:
            moe_metrics(self.model, reset=True)
