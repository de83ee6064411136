"""Quantization-aware training in the recipes: the `qat:` section through torchao's fake quantization.

Each selected `nn.Linear` becomes torchao's `FakeQuantizedLinear`, which holds the same weight
and bias parameters under the same names; its fake quantizers hold no state, so checkpoints keep
their keys and load in plain transformers. From optimizer step `start_step` on, the layer
computes with its weight rounded to the grid of its quantized form and back (and, with
`int8_dynact_int4weight`, its input too), so training learns weights that survive quantization;
before that step it computes as a plain linear layer.

The schemes are those of torchao's `Int8DynActInt4WeightQATQuantizer` and
`Int4WeightOnlyQATQuantizer` with bfloat16 weight scales, as NeMo AutoModel builds them, applied
through torchao's `QATConfig` and `quantize_` (the maintained API, which takes a layer filter):

- `int8_dynact_int4weight`: the input int8 per token (asymmetric, scales from the current
  tensor); the weight int4 in groups of `group_size` input features (symmetric)
- `int4_weight_only`: the weight uint4 in groups of `group_size` (asymmetric, a floating-point
  zero point, as torchao's int4 tinygemm kernel); the input as it is

A layer stays as it is when its path contains one of `skip_modules`, when its input features
are not a multiple of `group_size`, with `int4_weight_only` when it has a bias (as torchao's
quantizer), and when its class only derives from `nn.Linear` (its own forward would be lost).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from automodel.core.config import ConfigNode
from automodel.core.losses import FusedLinearCrossEntropy

from ._errors import config_problem
from ._sections import Distributed, Qat, read_section

log = logging.getLogger("automodel.recipes")

SCHEMES = ("int8_dynact_int4weight", "int4_weight_only")
INT4_GROUP_SIZES = (32, 64, 128, 256)  # torchao's int4 weight-only kernels


class FakeQuant:
    """The fake quantization of a model's QAT layers, switched by optimizer step: off before
    `start_step`, on from it. The training loop calls `at_step(step)` before each step's
    forwards; without layers (no `qat:` section) it does nothing."""

    def __init__(self, layers: Sequence[nn.Module] = (), start_step: int = 1) -> None:
        self.layers = list(layers)
        self.start_step = start_step
        self.enabled = False
        self._switch(False)

    def at_step(self, step: int) -> None:
        """Set the fake quantization for optimizer step `step` (counting from 1)."""
        on = bool(self.layers) and step >= self.start_step
        if on != self.enabled:
            self._switch(on)
            log.info("qat: fake quantization %s from step %d", "on" if on else "off", step)

    def _switch(self, on: bool) -> None:
        if self.layers:
            from torchao.quantization.qat.linear import enable_linear_fake_quant

            for layer in self.layers:
                enable_linear_fake_quant(layer, enabled=on)
        self.enabled = on


def read_qat(cfg: ConfigNode) -> Qat | None:
    """The checked `qat:` section, or None when the config has none."""
    if "qat" not in cfg:
        return None
    section = read_section(cfg, "qat", Qat)
    if section.scheme not in SCHEMES:
        message = f"expected one of {', '.join(SCHEMES)}, got {section.scheme!r}"
        raise config_problem(cfg, "qat.scheme", message)
    size = section.group_size
    if not _positive_int(size):
        raise config_problem(cfg, "qat.group_size", f"expected an integer >= 1, got {size!r}")
    if section.scheme == "int4_weight_only" and size not in INT4_GROUP_SIZES:
        message = f"int4_weight_only takes group_size {', '.join(map(str, INT4_GROUP_SIZES))} (torchao's int4 kernels), got {size}"  # fmt: skip
        raise config_problem(cfg, "qat.group_size", message)
    start = section.start_step
    if not _positive_int(start):
        message = f"expected an integer >= 1 (1: fake quantization from the first step), got {start!r}"  # fmt: skip
        raise config_problem(cfg, "qat.start_step", message)
    max_steps = cfg.get("step_scheduler.max_steps")
    if isinstance(max_steps, int) and start > max_steps:
        message = f"start_step {start} is after the last step (step_scheduler.max_steps: {max_steps}): fake quantization would never start"  # fmt: skip
        raise config_problem(cfg, "qat.start_step", message)
    skip = section.skip_modules
    if not isinstance(skip, tuple) or not all(isinstance(s, str) for s in skip):
        message = f"expected a list of module path parts (e.g. [lm_head]), got {skip!r}"
        raise config_problem(cfg, "qat.skip_modules", message)
    _check_combinations(cfg)
    if importlib.util.find_spec("torchao") is None:
        message = (
            "quantization-aware training needs torchao, which is not installed; install it "
            "with `pip install 'automodel-recipes[qat]'`"
        )
        raise config_problem(cfg, "qat", message)
    return section


def _check_combinations(cfg: ConfigNode) -> None:
    """What QAT does not compose with (yet): a config problem naming the other section."""
    refused = {
        "peft": "LoRA adapters (peft:): the adapted layers are not plain linear layers, so "
        "their base weights would stay unquantized; drop peft: to train the full model",
        "fp8": "float8 training (fp8:): both replace the linear layers; keep one",
        "moe": "automodel.moe's MoE blocks (moe:): their experts are not linear layers",
    }
    for other, what in refused.items():
        if other in cfg:
            message = f"quantization-aware training is not supported with {what}"
            raise config_problem(cfg, "qat", message)
    if read_section(cfg, "distributed", Distributed).tp_size > 1:
        message = "quantization-aware training with tensor parallelism (tp_size > 1) is not supported yet"  # fmt: skip
        raise config_problem(cfg, "qat", message)


def apply_qat(model: nn.Module, section: Qat, cfg: ConfigNode, loss_fn: Any = None) -> FakeQuant:
    """Make the selected linear layers fake-quantized in place (switched off until
    `start_step`); their switch. After MoE blocks and before the restore, sharding and the
    optimizer (the modules change, the parameters stay)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import FakeQuantizedLinear, QATConfig

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    activation, weight = _fake_quantize_configs(section)
    converted: list[str] = []

    def select(module: nn.Module, path: str) -> bool:
        if type(module) is not nn.Linear or any(s in path for s in section.skip_modules):
            return False
        if module.in_features % section.group_size:
            return False
        if section.scheme == "int4_weight_only" and module.bias is not None:
            return False
        if module is head and isinstance(loss_fn, FusedLinearCrossEntropy):
            message = (
                f"the fused loss reads the LM head's weight ({path}) directly, so its fake "
                f"quantization would not apply; add {path} to qat.skip_modules"
            )
            raise config_problem(cfg, "qat.skip_modules", message)
        converted.append(path)
        return True

    config = QATConfig(activation_config=activation, weight_config=weight, step="prepare")
    quantize_(model, config, filter_fn=select)
    if not converted:
        message = f"no linear layer to fake-quantize (all skipped: by skip_modules, a bias with int4_weight_only, or input features not a multiple of group_size {section.group_size})"  # fmt: skip
        raise config_problem(cfg, "qat", message)
    log.info(
        "qat: %d linear layer(s) fake-quantized (%s, group size %d) from step %d",
        len(converted), section.scheme, section.group_size, section.start_step,
    )  # fmt: skip
    layers = [m for m in model.modules() if isinstance(m, FakeQuantizedLinear)]
    return FakeQuant(layers, section.start_step)


def _fake_quantize_configs(section: Qat) -> tuple[Any, Any]:
    """(activation, weight) fake quantization of `section.scheme`: the configs of torchao's
    legacy QAT linear layers of that scheme, with bfloat16 weight scales (NeMo AutoModel's)."""
    import torch
    from torchao.quantization import ZeroPointDomain
    from torchao.quantization.qat import IntxFakeQuantizeConfig

    if section.scheme == "int4_weight_only":
        weight = IntxFakeQuantizeConfig(
            dtype=torch.uint4, group_size=section.group_size, is_symmetric=False,
            is_dynamic=True, scale_precision=torch.bfloat16,
            zero_point_precision=torch.bfloat16, zero_point_domain=ZeroPointDomain.FLOAT,
        )  # fmt: skip
        return None, weight
    activation = IntxFakeQuantizeConfig(
        dtype=torch.int8, granularity="per_token", is_symmetric=False, is_dynamic=True,
        scale_precision=torch.float32, zero_point_precision=torch.float32,
        eps=torch.finfo(torch.float32).eps,
    )  # fmt: skip
    weight = IntxFakeQuantizeConfig(
        dtype=torch.int4, group_size=section.group_size, is_symmetric=True, is_dynamic=True,
        scale_precision=torch.bfloat16, zero_point_precision=torch.bfloat16,
    )  # fmt: skip
    return activation, weight


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
