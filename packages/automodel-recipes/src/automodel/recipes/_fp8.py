"""FP8 training in the recipes: the `fp8:` section through torchao's float8 training.

Each selected `nn.Linear` becomes torchao's `Float8Linear` (same weight and bias, same names,
so checkpoints are unchanged): its three matmuls run in float8 with scales computed from the
current tensors (`tensorwise`: one per tensor; `rowwise`: one per row; `rowwise_with_gw_hp`:
rowwise, the weight gradient in high precision). A layer is left as it is when its path
contains one of `skip_modules`, or when a dimension of its weight is not a multiple of 16 (the
float8 matmul kernels need it).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging

import torch
from torch import nn

from automodel.core.config import ConfigNode

from ._errors import config_problem
from ._sections import Distributed, Fp8, read_section

log = logging.getLogger("automodel.recipes")

RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")


def read_fp8(cfg: ConfigNode) -> Fp8 | None:
    """The checked `fp8:` section, or None when the config has none."""
    if "fp8" not in cfg:
        return None
    section = read_section(cfg, "fp8", Fp8)
    if section.recipe not in RECIPES:
        message = f"expected one of {', '.join(RECIPES)}, got {section.recipe!r}"
        raise config_problem(cfg, "fp8.recipe", message)
    if section.fsdp_float8_all_gather and section.recipe != "tensorwise":
        message = "gathering weights in float8 needs the tensorwise recipe (one scale per tensor)"
        raise config_problem(cfg, "fp8.fsdp_float8_all_gather", message)
    for other, what in (("peft", "LoRA adapters"), ("moe", "automodel.moe's MoE blocks")):
        if other in cfg:
            message = f"FP8 training with {what} ({other}:) is not supported yet"
            raise config_problem(cfg, "fp8", message)
    if read_section(cfg, "distributed", Distributed).tp_size > 1:
        message = "FP8 training with tensor parallelism (tp_size > 1) is not supported yet"
        raise config_problem(cfg, "fp8", message)
    if importlib.util.find_spec("torchao") is None:
        message = (
            "FP8 training needs torchao, which is not installed; install it with "
            "`pip install 'automodel-recipes[fp8]'`"
        )
        raise config_problem(cfg, "fp8", message)
    return section


def apply_fp8(model: nn.Module, section: Fp8, cfg: ConfigNode) -> list[str]:
    """Make the selected linear layers float8 in place; their paths. After LoRA and before the
    restore, sharding and the optimizer (the modules change, the parameters stay)."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    if not section.emulate and not _has_float8_matmuls():
        message = (
            "float8 matmuls need a CUDA GPU of compute capability 8.9 or newer (H100, L40S, "
            "...); set fp8.emulate: true to emulate them (slow: for tests)"
        )
        raise config_problem(cfg, "fp8.emulate", message)
    if section.recipe == "tensorwise":
        config = Float8LinearConfig(
            enable_fsdp_float8_all_gather=section.fsdp_float8_all_gather, emulate=section.emulate
        )
    else:
        config = Float8LinearConfig.from_recipe_name(section.recipe)
        config = dataclasses.replace(config, emulate=section.emulate)
        if (
            section.recipe == "rowwise"
        ):  # torch.compile keeps the casts' rounding (torchao's advice)
            torch._inductor.config.emulate_precision_casts = True
    converted: list[str] = []

    def convert(module: nn.Module, path: str) -> bool:
        if not isinstance(module, nn.Linear) or any(s in path for s in section.skip_modules):
            return False
        if any(dim % 16 for dim in module.weight.shape):
            return False
        converted.append(path)
        return True

    convert_to_float8_training(model, config=config, module_filter_fn=convert)
    if not converted:
        raise config_problem(cfg, "fp8", "no linear layer to train in float8 (all skipped)")
    log.info("fp8: %d linear layer(s) in float8 (%s)", len(converted), section.recipe)
    return converted


def _has_float8_matmuls() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
