"""One table of dtype spellings for the three private dtype parsers (core, distributed, peft).

The layering keeps them separate copies; this table keeps them the same: the same accepted
names give the same torch dtype, and anything else is a ValueError that names the bad value and
lists every accepted name.
"""

from __future__ import annotations

import pytest
import torch

from automodel.core.models import _dtype as core_dtype
from automodel.distributed import _dtype as distributed_dtype
from automodel.peft import _dtype as peft_dtype

PARSERS = {
    "core": core_dtype.parse_dtype,
    "distributed": distributed_dtype.parse_dtype,
    "peft": peft_dtype.parse_dtype,
}

GOOD = [
    ("bfloat16", torch.bfloat16),
    ("bf16", torch.bfloat16),
    ("torch.bfloat16", torch.bfloat16),
    ("BF16", torch.bfloat16),
    (" bfloat16 ", torch.bfloat16),
    (torch.bfloat16, torch.bfloat16),
    ("float16", torch.float16),
    ("fp16", torch.float16),
    ("half", torch.float16),
    ("torch.float16", torch.float16),
    ("torch.half", torch.float16),
    (torch.float16, torch.float16),
    ("float32", torch.float32),
    ("fp32", torch.float32),
    ("float", torch.float32),
    ("torch.float32", torch.float32),
    ("Float32", torch.float32),
    (torch.float32, torch.float32),
]

BAD = [
    "float64",
    "double",
    "int8",
    "float8",
    "fp8",
    "bfloat",
    "b16",
    "auto",  # core's resolve_dtype handles "auto" before parsing; the parser itself refuses it
    "",
    "torch.",
    "torch.int64",
    torch.float64,
    torch.int64,
    torch.bool,
    16,
    None,
]

ACCEPTED = ("bfloat16", "bf16", "float16", "fp16", "half", "float32", "fp32", "float")


def test_the_three_parsers_accept_the_same_names():
    assert (
        core_dtype.ACCEPTED_DTYPE_NAMES
        == distributed_dtype.ACCEPTED_DTYPE_NAMES
        == peft_dtype.ACCEPTED_DTYPE_NAMES
        == ACCEPTED
    )


@pytest.mark.parametrize("package", PARSERS)
@pytest.mark.parametrize(("value", "expected"), GOOD, ids=[repr(v) for v, _ in GOOD])
def test_good_spellings(package, value, expected):
    assert PARSERS[package](value, "opt") is expected


@pytest.mark.parametrize("package", PARSERS)
@pytest.mark.parametrize("value", BAD, ids=[repr(v) for v in BAD])
def test_bad_spellings(package, value):
    with pytest.raises(ValueError) as err:
        PARSERS[package](value, "opt")
    msg = str(err.value)
    assert msg.startswith(f"opt={value!r} is not an accepted dtype; valid values are ")
    assert ", ".join(ACCEPTED) in msg


def test_the_callers_use_the_table():
    from automodel.core.config import UserError
    from automodel.core.models import DTYPE_NAMES, resolve_dtype
    from automodel.distributed import FSDP2Strategy
    from automodel.peft import LoraConfig, LoraConfigError

    assert core_dtype.DTYPE_NAMES is DTYPE_NAMES
    assert DTYPE_NAMES[0] == "auto" and DTYPE_NAMES[1:] == ACCEPTED
    for value, expected in GOOD:
        assert resolve_dtype(value) is expected
        assert FSDP2Strategy(mp_param_dtype=value).mp_param_dtype is expected
        assert LoraConfig(match_all_linear=True, lora_dtype=value).lora_dtype is expected
    assert resolve_dtype("AUTO") == "auto"
    assert FSDP2Strategy(mp_param_dtype=None).mp_param_dtype is None
    assert LoraConfig(match_all_linear=True, lora_dtype=None).lora_dtype is None
    with pytest.raises(UserError, match=r"torch_dtype='fp8' is not an accepted dtype.*'auto'"):
        resolve_dtype("fp8")
    with pytest.raises(ValueError, match=r"mp_reduce_dtype='fp8' is not an accepted dtype"):
        FSDP2Strategy(mp_reduce_dtype="fp8")
    with pytest.raises(LoraConfigError, match=r"lora_dtype='fp8' is not an accepted dtype"):
        LoraConfig(match_all_linear=True, lora_dtype="fp8")
