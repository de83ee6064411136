"""4-bit NormalFloat (NF4) base weights for QLoRA, through torchao (extra ``automodel-peft[qlora]``)."""

from __future__ import annotations

import importlib.util

import torch

from ._config import LoraConfigError

_MAX_SCALER_BLOCK = 256


def torchao_available() -> bool:
    """Whether torchao can be imported (without importing it)."""
    return importlib.util.find_spec("torchao") is not None


def is_quantized(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is an NF4 tensor (never imports torchao when it is not loaded)."""
    cls = type(tensor.data) if isinstance(tensor, torch.nn.Parameter) else type(tensor)
    return cls.__name__ == "NF4Tensor"


def dequantize(tensor: torch.Tensor) -> torch.Tensor:
    """The dense tensor an NF4 tensor stands for, in its original dtype."""
    return tensor.get_original_weight()


def check_nf4(weight: torch.Tensor, block_size: int, where: str) -> None:
    """Raise LoraConfigError unless ``weight`` can be stored in NF4 (torchao present, sizes fit)."""
    if not torchao_available():
        raise LoraConfigError(
            "quantize_base: nf4 needs torchao: pip install 'automodel-peft[qlora]'"
        )
    numel = weight.numel()
    if numel % block_size:
        raise LoraConfigError(
            f"cannot store {where} (shape {list(weight.shape)}, {numel} elements) in NF4 with "
            f"nf4_block_size {block_size}: the element count must be a multiple of it. "
            "Pick another block size or exclude this module"
        )


def quantize_nf4(weight: torch.Tensor, block_size: int, where: str) -> torch.nn.Parameter:
    """A frozen NF4 copy of ``weight`` (blockwise absmax, double-quantized block scales)."""
    check_nf4(weight, block_size, where)
    blocks = weight.numel() // block_size
    scaler_block = max(d for d in range(1, min(blocks, _MAX_SCALER_BLOCK) + 1) if blocks % d == 0)
    from torchao.quantization import to_nf4

    # The NF4 tensor dequantizes to (and computes in) the weight's own dtype.
    nf4 = to_nf4(weight.detach(), block_size=block_size, scaler_block_size=scaler_block)
    return torch.nn.Parameter(nf4, requires_grad=False)


def quantized_nbytes(tensor: torch.Tensor) -> int:
    """Bytes an NF4 tensor holds (codes, scales and their scales), or a dense tensor's bytes."""
    if not is_quantized(tensor):
        return tensor.numel() * tensor.element_size()
    parts = ("quantized_data", "quantized_scalers", "quantization_factor", "scaler_mean", "nf4")
    return sum(
        getattr(tensor, p).numel() * getattr(tensor, p).element_size()
        for p in parts
        if isinstance(getattr(tensor, p, None), torch.Tensor)
    )
