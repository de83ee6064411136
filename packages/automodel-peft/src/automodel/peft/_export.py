"""The base model's state_dict with every adapter folded in, for a full Hugging Face export."""

from __future__ import annotations

import torch
from torch import nn

from ._apply import lora_modules

_ADAPTER_LEAVES = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's keys with merged dense weights (NF4 dequantized); ``model`` is unchanged."""
    wrapped = dict(lora_modules(model))
    adapter_keys = {f"{path}.{leaf}" for path in wrapped for leaf in _ADAPTER_LEAVES}
    out = {}
    for name, tensor in model.state_dict().items():
        if name in adapter_keys:
            continue
        module = wrapped.get(name.removesuffix(".weight")) if name.endswith(".weight") else None
        out[name] = module.merged_weight() if module is not None else tensor.detach()
    return out
