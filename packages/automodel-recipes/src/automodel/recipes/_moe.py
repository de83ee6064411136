"""Mixture-of-Experts in the recipes: the `moe:` section through automodel.moe's public API."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from automodel.core.config import ConfigNode
from automodel.distributed import all_reduce_sum, submesh
from automodel.moe import (
    DISPATCHERS,
    GroupedExperts,
    attach_aux_loss,
    moe_aux_loss,
    moe_metrics,
    patch_hf_moe,
    routing_mask,
    set_routing_mask,
    shard_experts,
    uncounted,
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
    if section.lora_rank_scaling and "peft" not in cfg:
        message = (
            "it sets the rank of LoRA on the MoE experts, and the config has no peft: section; "
            "add one (with target_parameters) or drop this option"
        )
        raise config_problem(cfg, "moe.lora_rank_scaling", message)
    if section.dispatcher == "deepep" and ep_size == 1:
        message = (
            "deepep moves tokens between expert-parallel ranks: set distributed.ep_size > 1, "
            "or leave moe.dispatcher at all_to_all"
        )
        raise config_problem(cfg, "moe.dispatcher", message)
    return section


def apply_moe(model: nn.Module, section: Moe, cfg: ConfigNode) -> None:
    """Swap the MoE blocks in place; before LoRA, the restore, sharding and the optimizer."""
    not_blocks = ("dispatcher", "lora_rank_scaling")  # read by expert parallelism and LoRA
    block_options = {k: v for k, v in section.__dict__.items() if k not in not_blocks}
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
        self._run: _StageRun | None = None  # pipeline: the micro-batches the schedule runs now

    def shard_experts(
        self, cfg: ConfigNode, module: nn.Module | None = None
    ) -> set[nn.Parameter] | None:
        """With `distributed.ep_size` > 1 keep this rank's experts; the strategy leaves them out.

        Call it on the whole (restored) model, or on each pipeline stage (`module`), before
        sharding and the optimizer.
        """
        module = self.model if module is None else module
        if self.section is None or self.parallel.ep_size == 1:
            return None
        experts = [m for m in module.modules() if isinstance(m, GroupedExperts)]
        if not experts:  # a pipeline stage of dense layers only
            return None
        module.to(self.parallel.device)  # the expert DTensors are made on their device
        dispatcher = self.section.dispatcher
        try:
            shard_experts(module, submesh(self.parallel.mesh, "ep"), dispatcher)
        except ValueError as e:
            raise config_problem(cfg, "distributed.ep_size", str(e)) from e
        except RuntimeError as e:  # deepep: the extra or CUDA is missing
            raise config_problem(cfg, "moe.dispatcher", str(e)) from e
        params = [p for m in experts for p in m.parameters(recurse=False)]  # not their LoRA
        self.experts.extend(params)
        return set(params)

    def use_stages(self, stages: Sequence[nn.Module], module: nn.Module) -> None:
        """With pp_size > 1, after sharding: this rank's `stages` (their experts sharded first,
        `shard_experts`) replace the model, `module` (them as one) for the bias update and
        metrics. Hooks give each stage's routers the micro-batch's `token_mask` and carry the
        stage's balancing loss into backward (the loss exists on the last stage only); see
        `pipeline_run`."""
        self.model = module
        if self.section is None:
            return
        for stage in stages:  # after the strategy's hooks: they see the stage's own output
            stage.register_forward_pre_hook(self._stage_pre_forward, with_kwargs=True)
            stage.register_forward_hook(self._stage_forward, with_kwargs=True)

    @contextlib.contextmanager
    def pipeline_run(
        self, token_masks: Sequence[torch.Tensor], micro_batches: int, loss_scale: float
    ) -> Iterator[None]:
        """Inside, the schedule runs the step (or validation chunk) whose `token_masks` (one per
        micro-batch, passed to every stage as `token_mask`) the routers count by; `micro_batches`
        of them are real, and the last stage's loss is scaled by `loss_scale`.

        A stage forward with a mask that is not one of these is the schedule's shape probe: it
        counts no load. Each stage's balancing loss joins backward weighted as `aux_loss`
        weights it, × `loss_scale`, as if it were added to that micro-batch's loss.
        """
        weight = loss_scale * self.aux_weight(micro_batches) if micro_batches else 0.0
        self._run = _StageRun(list(token_masks), weight)
        try:
            yield
        finally:
            self._run.count_from(None, probe=False)
            self._run = None
            set_routing_mask(self.model, None)  # the mask a backward set (see _stage_forward)

    def _stage_pre_forward(self, stage: nn.Module, args: tuple, kwargs: dict) -> None:
        mask, run = kwargs.get("token_mask"), self._run
        if run is not None:
            run.count_from(stage, probe=not any(mask is m for m in run.masks))
        set_routing_mask(stage, mask)

    def _stage_forward(self, stage: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor):
        aux = moe_aux_loss(stage)
        set_routing_mask(stage, None)
        run = self._run
        if not (torch.is_grad_enabled() and output.requires_grad):
            return output
        if aux is not None and run is not None and run.aux_weight:
            output = attach_aux_loss(output, aux * run.aux_weight)
        mask = kwargs.get("token_mask")
        if mask is not None:  # activation checkpointing recomputes the routers in backward
            output.register_hook(lambda grad: set_routing_mask(stage, mask))
        return output

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

    def aux_weight(self, micro_batches: int) -> float:
        """The weight of one micro-batch's balancing loss in a loss × `averaged_over`: the step's
        gradient is then that of the mean over every micro-batch of every dp × cp rank, as one
        process running the whole global batch computes it."""
        return 1.0 / (micro_batches * self.parallel.averaged_over)

    def aux_loss(self, micro_batches: int) -> torch.Tensor | None:
        """The last forward's balancing loss, weighted by `aux_weight` (add it to the loss)."""
        if self.section is None:
            return None
        aux = moe_aux_loss(self.model)
        return None if aux is None else aux * self.aux_weight(micro_batches)

    def real_tokens_only(self, batch: dict[str, torch.Tensor]) -> contextlib.AbstractContextManager:
        """Inside (forward and backward), the routers count the batch's real tokens, not padding."""
        if self.section is None:
            return contextlib.nullcontext()
        mask = batch.get("attention_mask")  # packed rows have none: every position counts
        return routing_mask(self.model, None if mask is None else mask.to(self.parallel.device))

    def after_optimizer_step(self) -> None:
        """Nudge the routing biases (bias balancing), on the device."""
        if self.section is not None and self.section.balancing == "bias":
            # counts summed over the dp ranks (with a pipeline: those of this rank's stage)
            update_moe_bias(self.model, self.parallel.group)

    def window_metrics(self) -> dict[str, float]:
        """The load metrics of the steps since the last call, over every dp rank and pipeline
        stage (a collective that reads the counts back: call it where the host waits anyway,
        at a log step)."""
        if self.section is None:
            return {}
        group, stages = self.parallel.group, self.parallel.pp_group
        return moe_metrics(self.model, reset=True, sum_over=group, parts_group=stages)

    def forget_load(self) -> None:
        """Drop the load counted by forwards that are not training (validation)."""
        if self.section is not None:
            moe_metrics(self.model, reset=True)


class _StageRun:
    """The micro-batches a pipeline schedule runs now (see `MoeStep.pipeline_run`)."""

    def __init__(self, masks: list[torch.Tensor], aux_weight: float):
        self.masks, self.aux_weight = masks, aux_weight
        self._probes: dict[nn.Module, contextlib.AbstractContextManager] = {}

    def count_from(self, stage: nn.Module | None, probe: bool) -> None:
        """Before a forward of `stage` (None: at the end): torch's metadata inference (`probe`)
        runs a forward and backward (activation checkpointing recomputes the routers there) on
        made-up activations before the first micro-batch; what they count is undone when the
        stage's first real forward begins."""
        if probe:
            if stage not in self._probes:
                self._probes[stage] = context = uncounted(stage)
                context.__enter__()
            return
        for key in [key for key in self._probes if stage is None or key is stage]:
            self._probes.pop(key).__exit__(None, None, None)
