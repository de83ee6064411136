"""The base model's state_dict with every adapter folded in, for a full Hugging Face export."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._apply import lora_modules, lora_parameters, lora_state_dict
from ._lora_linear import LoraLinear, merge_weight
from ._quant import dequantize, is_quantized
from ._stacked import StackedLora, holder_path

_ADAPTER_LEAVES = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")


@torch.no_grad()
def merged_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The base model's keys with merged dense weights (NF4 dequantized); ``model`` is unchanged.

    ``state``: the model's full state dict when its own tensors are shards (FSDP2: gather it
    with ``get_model_state_dict(..., full_state_dict=True)``); the LoRA settings still come
    from ``model``.
    """
    wrapped = dict(lora_modules(model))
    stacked = dict(lora_parameters(model))
    adapter_keys = {f"{path}.{leaf}" for path in wrapped for leaf in _ADAPTER_LEAVES}
    adapter_keys |= set(lora_state_dict(model))
    source = model.state_dict() if state is None else state
    out = {}
    for name, tensor in source.items():
        if name in adapter_keys:
            continue
        if name in stacked:
            adapter = stacked[name]
            out[name] = (
                adapter.merged_weight() if state is None else _merge_stacked(name, adapter, state)
            )
            continue
        module = wrapped.get(name.removesuffix(".weight")) if name.endswith(".weight") else None
        if module is None:
            out[name] = tensor.detach()
        elif state is None:
            out[name] = module.merged_weight()
        else:
            out[name] = _merge_from_state(name.removesuffix(".weight"), module, state)
    return out


def _merge_from_state(
    path: str, module: LoraLinear, state: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    weight = state[f"{path}.weight"]
    if module.merged:
        return weight.detach().clone()
    weight = dequantize(weight) if is_quantized(weight) else weight
    a, b = state[f"{path}.lora_A.weight"].float(), state[f"{path}.lora_B.weight"].float()
    magnitude = state[f"{path}.lora_magnitude_vector"] if module.use_dora else None
    if module.fan_in_fan_out:  # Conv1D stores (in, out): merge in (out, in), store transposed
        return merge_weight(weight.T, (b @ a) * module.scaling, magnitude).T.contiguous()
    return merge_weight(weight, (b @ a) * module.scaling, magnitude)


def _merge_stacked(
    name: str, adapter: StackedLora, state: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    weight = state[name]
    if adapter.merged:
        return weight.detach().clone()
    holder = holder_path(name.rsplit(".", 1)[0], adapter)
    a, b = state[f"{holder}.lora_A.weight"].float(), state[f"{holder}.lora_B.weight"].float()
    return merge_weight(weight, adapter.delta_from(a, b))
