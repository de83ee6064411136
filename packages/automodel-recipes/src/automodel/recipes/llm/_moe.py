"""Mixture-of-Experts in the LLM recipe: the `moe:` section through automodel.moe's public API."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from automodel.core.config import ConfigError, ConfigNode, Problem
from automodel.moe import moe_aux_loss, moe_metrics, patch_hf_moe, update_moe_bias

from ._sections import Moe, read_section

log = logging.getLogger("automodel.recipes.llm")


def read_moe(cfg: ConfigNode) -> Moe | None:
    """The `moe:` section, or None when the config has none."""
    if "moe" not in cfg:
        return None
    section = read_section(cfg, "moe", Moe)
    if section.balancing is None:  # `none` on the command line arrives as null
        section = Moe(**{**section.__dict__, "balancing": "none"})
    return section


def apply_moe(model: nn.Module, section: Moe, cfg: ConfigNode) -> None:
    """Swap the MoE blocks in place; before LoRA, the restore, sharding and the optimizer."""
    try:
        replaced = patch_hf_moe(model, **section.__dict__)
    except (TypeError, ValueError) as e:
        raise ConfigError(Problem("moe", str(e), cfg.where("moe"))) from e
    log.info(
        "moe: %d MoE block(s) use automodel.moe (balancing %s, backend %s)",
        len(replaced), section.balancing, section.backend,
    )  # fmt: skip


class MoeStep:
    """What an optimizer step adds for MoE: the aux loss, the bias update, load metrics."""

    def __init__(self, model: nn.Module, section: Moe | None, group: Any):
        self.model, self.section, self.group = model, section, group

    def aux_loss(self, micro_batches: int) -> torch.Tensor | None:
        """The last forward's balancing loss, as this micro-batch's share of the step's mean."""
        if self.section is None:
            return None
        aux = moe_aux_loss(self.model)
        return None if aux is None else aux / micro_batches

    def after_optimizer_step(self) -> dict[str, float]:
        """Nudge the routing biases (bias balancing); return the step's load metrics (rank 0)."""
        if self.section is None:
            return {}
        if self.section.balancing == "bias":
            update_moe_bias(self.model, self.group)  # counts summed over the data-parallel ranks
        return moe_metrics(self.model, reset=True)

    def forget_load(self) -> None:
        """Drop the load counted by forwards that are not training (validation)."""
        if self.section is not None:
            moe_metrics(self.model, reset=True)
