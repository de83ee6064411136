"""Resolve the dtype names a config may use into torch dtypes."""

from __future__ import annotations

import torch

from ..config import UserError

_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}

DTYPE_NAMES: tuple[str, ...] = ("auto", *_DTYPES)


def resolve_dtype(value: str | torch.dtype) -> torch.dtype | str:
    """A torch dtype for a name such as "bfloat16" (or a dtype); "auto" is returned unchanged."""
    if isinstance(value, torch.dtype):
        if not value.is_floating_point:
            raise UserError(f"torch_dtype must be a floating-point dtype, got {value}")
        return value
    if isinstance(value, str):
        name = value.strip().lower().removeprefix("torch.")
        if name == "auto":
            return "auto"
        if name in _DTYPES:
            return _DTYPES[name]
    raise UserError(
        f"unknown torch_dtype {value!r}; valid values are {', '.join(DTYPE_NAMES)} "
        "or a torch.dtype such as torch.bfloat16"
    )
