"""Dtype names a config may use -> torch dtypes.

automodel-core, automodel-distributed and automodel-peft each keep a copy of this parser (the
layering forbids a shared import); tests/packaging/test_dtype_names.py holds them to one table.
"""

from __future__ import annotations

import torch

# The one accepted set: any case, optionally prefixed "torch."; a torch.dtype among these values.
_DTYPE_NAMES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}
ACCEPTED_DTYPE_NAMES: tuple[str, ...] = tuple(_DTYPE_NAMES)


class DtypeNameError(ValueError):
    """A dtype name (or torch.dtype) outside the accepted set."""


def parse_dtype(value: str | torch.dtype, option: str = "dtype") -> torch.dtype:
    """``"bf16"`` / ``"torch.bfloat16"`` / torch.bfloat16 -> torch.bfloat16; DtypeNameError else."""
    if isinstance(value, torch.dtype):
        if value in _DTYPE_NAMES.values():
            return value
    elif isinstance(value, str):
        name = value.strip().lower().removeprefix("torch.")
        if name in _DTYPE_NAMES:
            return _DTYPE_NAMES[name]
    raise DtypeNameError(
        f"{option}={value!r} is not an accepted dtype; valid values are "
        f"{', '.join(ACCEPTED_DTYPE_NAMES)} (any case, optionally prefixed 'torch.')"
    )
