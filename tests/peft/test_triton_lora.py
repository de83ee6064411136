"""The fused Triton LoRA kernel: clear errors without CUDA, and numerics against the plain path.

The numerics run on CUDA when there is one, and on CPU under Triton's interpreter
(``TRITON_INTERPRET=1``, set in a subprocess before Triton is imported).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

import pytest
import torch
from torch import nn

from automodel.peft import LoraConfig, LoraLinear, _triton_lora
from automodel.peft._quant import quantize_nf4, torchao_available

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}
needs_triton = pytest.mark.skipif(
    not _triton_lora.triton_available(), reason="triton is not installed"
)


@dataclass(frozen=True)
class Case:
    """One comparison of the fused kernel with the plain LoraLinear path."""

    dtype: str = "float32"
    bias: bool = False
    dropout: float = 0.0
    train_base: bool = False
    eval_mode: bool = False
    nf4: bool = False
    autocast: bool = False
    lora_dtype: str | None = None
    lead: tuple[int, ...] = (3, 13)
    features: tuple[int, int] = (70, 45)
    rank: int = 5


def cases(device: str) -> list[Case]:
    """Dtypes, bias, dropout, trainable base, eval mode, autocast; NF4 and larger shapes on CUDA."""
    out = [
        Case("float32"),
        Case("float32", bias=True, dropout=0.3),
        Case("float32", bias=True, train_base=True),
        Case("bfloat16"),
        Case("bfloat16", bias=True, dropout=0.25),
        Case("float16", bias=True),
        Case("float16", dropout=0.1),
        Case("bfloat16", dropout=0.5, eval_mode=True),
        Case("float32", lead=(7,), features=(33, 17), rank=1),
        Case("float16", bias=True, dropout=0.1, lead=(5,), features=(40, 24), rank=70),
        Case("bfloat16", bias=True, dropout=0.2, lora_dtype="bfloat16"),
        Case("float32", bias=True, dropout=0.1, autocast=True),
        Case("float32", lead=(2, 0)),
    ]
    if device != "cuda":
        return out  # under the interpreter: small shapes, and no torchao import (seconds)
    if torchao_available():
        out.append(Case("bfloat16", bias=True, dropout=0.2, nf4=True, features=(128, 64)))
    return [
        *out,
        Case("bfloat16", bias=True, dropout=0.1, lead=(2, 300), features=(1000, 777), rank=16),
        Case("float32", lead=(4, 129), features=(513, 260), rank=80),
        Case("float16", bias=True, lead=(1030,), features=(256, 384), rank=8),
    ]


def build(case: Case, device: str) -> LoraLinear:
    """A LoraLinear with a non-zero B, so the low-rank term shows in every output."""
    dtype = getattr(torch, case.dtype)
    torch.manual_seed(0)
    fan_in, fan_out = case.features
    base = nn.Linear(fan_in, fan_out, bias=case.bias, device=device, dtype=dtype)
    base.requires_grad_(case.train_base)
    if case.nf4:
        base.weight = quantize_nf4(base.weight, 64, "base")
    config = LoraConfig(
        dim=case.rank,
        alpha=2 * case.rank,
        dropout=case.dropout,
        lora_dtype=case.lora_dtype,
        target_modules=["proj"],
    )
    module = LoraLinear(base, config)
    nn.init.normal_(module.lora_B.weight)
    return module.train(not case.eval_mode)


def outputs(
    module: LoraLinear, x: torch.Tensor, grad: torch.Tensor, autocast: bool
) -> dict[str, torch.Tensor]:
    """Output and gradients of one forward+backward (dropout drawn from seed 1)."""
    for p in (x, *module.parameters()):
        p.grad = None
    torch.manual_seed(1)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        if not module.training:
            with torch.no_grad():
                return {"out": module(x)}
        out = module(x)
    out.backward(grad.to(out.dtype))
    named = {"x": x, "A": module.lora_A.weight, "B": module.lora_B.weight}
    named |= {"W": module.weight, "bias": module.bias}
    return {"out": out.detach()} | {
        name: t.grad for name, t in named.items() if t is not None and t.grad is not None
    }


def errors(case: Case, device: str) -> dict[str, float]:
    """Max abs difference fused vs plain, relative to the plain tensor's max abs value."""
    module = build(case, device)
    dtype = getattr(torch, case.dtype)
    fan_in, fan_out = case.features
    gen = torch.Generator(device).manual_seed(2)
    x = torch.randn(*case.lead, fan_in, generator=gen, device=device, dtype=dtype)
    grad = torch.randn(*case.lead, fan_out, generator=gen, device=device, dtype=dtype)
    x.requires_grad_(True)
    module.use_triton = False
    plain = outputs(module, x, grad, case.autocast)
    module.use_triton = True
    fused = outputs(module, x, grad, case.autocast)
    assert fused.keys() == plain.keys()
    assert all(fused[k].dtype == t.dtype and fused[k].shape == t.shape for k, t in plain.items())
    return {name: relative_error(fused[name], ref) for name, ref in plain.items()}


def relative_error(value: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs difference over the reference's max abs value (0 for empty tensors)."""
    if ref.numel() == 0:
        return 0.0
    scale = ref.float().abs().max().clamp_min(1e-30)
    return ((value.float() - ref.float()).abs().max() / scale).item()


def case_from_json(fields: dict[str, object]) -> Case:
    """A Case from its ``asdict`` JSON (lists back to tuples)."""
    return Case(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def tolerance(case: Case) -> float:
    """Relative tolerance of a case: its dtype's, or bfloat16's under autocast."""
    return TOLERANCE[torch.bfloat16 if case.autocast else getattr(torch, case.dtype)]


def check(results: list[tuple[Case, dict[str, float]]]) -> None:
    """Every error within its dtype's tolerance; a readable failure otherwise."""
    bad = [
        (case, errs)
        for case, errs in results
        if not errs or any(not e <= tolerance(case) for e in errs.values())
    ]
    assert not bad, "\n".join(f"{case}: {errs}" for case, errs in bad)


def test_cpu_input_raises_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    module = build(Case(), "cpu")
    module.use_triton = True
    expected = "CUDA device" if _triton_lora.triton_available() else "automodel-peft\\[triton\\]"
    with pytest.raises(RuntimeError, match=expected) as info:
        module(torch.randn(2, 70))
    if _triton_lora.triton_available():
        assert "use_triton: false" in str(info.value)


def test_missing_triton_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_triton_lora, "triton_available", lambda: False)
    module = build(Case(), "cpu")
    module.use_triton = True
    with pytest.raises(RuntimeError, match=r"pip install 'automodel-peft\[triton\]'"):
        module(torch.randn(2, 70))


@needs_triton
def test_input_dtype_must_match_the_base_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # get past the device check on CPU
    module = build(Case(), "cpu")
    module.use_triton = True
    with pytest.raises(RuntimeError, match="base weight's dtype"):
        module(torch.randn(2, 70, dtype=torch.bfloat16))


def test_importing_peft_does_not_import_triton() -> None:
    code = "import sys, automodel.peft; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_matches_plain_on_cuda() -> None:
    check([(case, errors(case, "cuda")) for case in cases("cuda")])


@needs_triton
def test_fused_matches_plain_under_triton_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    results = [(case_from_json(r["case"]), r["errors"]) for r in rows]
    assert len(results) == len(cases("cpu"))
    check(results)


if __name__ == "__main__":
    # Run by the interpreter test, with TRITON_INTERPRET=1 already in the environment.
    rows = [{"case": asdict(c), "errors": errors(c, "cpu")} for c in cases("cpu")]
    print(json.dumps(rows))
