"""Fused LoRA linear on CUDA through Triton (extra ``automodel-peft[triton]``).

One matmul kernel computes ``P @ Q + s * (U @ V) [* dropout mask] + bias`` with the low-rank
term added in the epilogue, so the LoRA output (or its input gradient) is never materialised:

* forward: ``y = x W^T + s * xa B^T + b`` with ``xa = dropout(x) A^T``;
* backward: ``dx = dy W + mask * s * (dy B) A``; ``dA``, ``dB`` (and ``dW``, ``db`` when the base
  needs grads) are small torch matmuls.

This module is imported only when a ``LoraLinear`` with ``use_triton`` runs forward, and it
imports Triton only if it is installed.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ._quant import dequantize, is_quantized

_MISSING = "use_triton needs the extra: pip install 'automodel-peft[triton]'"
_MAX_R_BLOCK = 64
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_available() -> bool:
    """Whether Triton can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


if triton_available():
    import triton
    import triton.language as tl

    def _configs() -> list[triton.Config]:
        """Tile shapes that compile without (much) register spilling on sm_80 and sm_90."""
        if interpreting():  # one config: no benchmarking of tiles on the CPU
            return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4})]
        shapes = [  # BLOCK_M, BLOCK_N, BLOCK_K, warps, stages
            (128, 256, 64, 8, 3),
            (128, 128, 64, 8, 3),
            (128, 128, 32, 4, 4),
            (64, 128, 64, 4, 4),
            (64, 64, 32, 4, 3),
        ]
        return [
            triton.Config(
                {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8},
                num_warps=w,
                num_stages=s,
            )
            for m, n, k, w, s in shapes
        ]

    @triton.autotune(configs=_configs(), key=["M_BUCKET", "N", "K", "R", "HAS_MASK"])
    @triton.jit
    def _lora_matmul_kernel(
        p_ptr,
        q_ptr,
        u_ptr,
        v_ptr,
        mask_ptr,
        bias_ptr,
        c_ptr,
        M,
        N,
        K,
        R,
        M_BUCKET,
        stride_pm,
        stride_pk,
        stride_qk,
        stride_qn,
        stride_um,
        stride_ur,
        stride_vr,
        stride_vn,
        stride_mm,
        stride_mn,
        stride_cm,
        stride_cn,
        scaling,
        drop_scale,
        HAS_MASK: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        R_BLOCK: tl.constexpr,
        PRECISION: tl.constexpr,
        UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        """``C = P @ Q + scaling * (U @ V) [* mask * drop_scale] + bias``, fp32 accumulation."""
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        group = GROUP_M * num_n
        first_m = (pid // group) * GROUP_M
        group_m = min(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % group_m
        pid_n = (pid % group) // group_m

        # Row/column offsets stay int32 inside a tile; the tile's base offset is int64.
        row0 = pid_m.to(tl.int64) * BLOCK_M
        col0 = pid_n.to(tl.int64) * BLOCK_N
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        in_m = offs_m < M - row0
        in_n = offs_n < N - col0
        in_mn = in_m[:, None] & in_n[None, :]

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        offs_k = tl.arange(0, BLOCK_K)
        p_ptrs = (
            p_ptr + row0 * stride_pm + offs_m[:, None] * stride_pm + offs_k[None, :] * stride_pk
        )
        q_ptrs = (
            q_ptr + col0 * stride_qn + offs_k[:, None] * stride_qk + offs_n[None, :] * stride_qn
        )
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            in_k = offs_k < K - k * BLOCK_K
            p = tl.load(p_ptrs, mask=in_m[:, None] & in_k[None, :], other=0.0)
            q = tl.load(q_ptrs, mask=in_k[:, None] & in_n[None, :], other=0.0)
            if UPCAST:  # the interpreter's dot mishandles bfloat16
                p = p.to(tl.float32)
                q = q.to(tl.float32)
            acc = tl.dot(p, q, acc, input_precision=PRECISION)
            p_ptrs += BLOCK_K * stride_pk
            q_ptrs += BLOCK_K * stride_qk

        # Epilogue: the low-rank term goes straight into the accumulator, or (under a dropout
        # mask, which applies to it alone) into a second one. U and V go in as float32 so the
        # term keeps float32 (or TF32) precision on a 16-bit base, like the plain path's
        # float32 adapter.
        if HAS_MASK:
            lora = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        u_base = u_ptr + row0 * stride_um
        v_base = v_ptr + col0 * stride_vn
        offs_r = tl.arange(0, R_BLOCK)
        for r in range(0, tl.cdiv(R, R_BLOCK)):
            in_r = offs_r < R - r * R_BLOCK
            rows = r * R_BLOCK + offs_r
            u = tl.load(
                u_base + offs_m[:, None] * stride_um + rows[None, :] * stride_ur,
                mask=in_m[:, None] & in_r[None, :],
                other=0.0,
            )
            v = tl.load(
                v_base + rows[:, None] * stride_vr + offs_n[None, :] * stride_vn,
                mask=in_r[:, None] & in_n[None, :],
                other=0.0,
            )
            u = u.to(tl.float32) * scaling
            v = v.to(tl.float32)
            if HAS_MASK:
                lora = tl.dot(u, v, lora, input_precision=PRECISION)
            else:
                acc = tl.dot(u, v, acc, input_precision=PRECISION)
        if HAS_MASK:
            mask_base = mask_ptr + row0 * stride_mm + col0 * stride_mn
            keep = tl.load(
                mask_base + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn,
                mask=in_mn,
                other=0,
            )
            acc += tl.where(keep != 0, lora * drop_scale, 0.0)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + col0 + offs_n, mask=in_n, other=0.0)
            acc += bias.to(tl.float32)[None, :]

        c_ptrs = c_ptr + row0 * stride_cm + col0 * stride_cn
        c_ptrs += offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=in_mn)


def _precision(dtype: torch.dtype) -> str:
    """``tl.dot`` precision on a ``dtype`` base: float32 follows torch's TF32 switch.

    It applies to float32 operands only: the base matmul's on a float32 base, and always the
    low-rank term's, where TF32 on a 16-bit base still beats the output's own rounding.
    """
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _lora_matmul(
    p: torch.Tensor,
    q: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    scaling: float,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    drop_scale: float = 1.0,
) -> torch.Tensor:
    """``p @ q + scaling * (u @ v) [* mask * drop_scale] + bias`` in one Triton kernel."""
    m, k = p.shape
    n = q.shape[1]
    r = u.shape[1]
    out = torch.empty(m, n, device=p.device, dtype=out_dtype)
    if m == 0 or n == 0:
        return out
    if mask is not None:
        mask = mask.view(torch.uint8)
    r_block = min(max(16, triton.next_power_of_2(r)), _MAX_R_BLOCK)
    upcast = interpreting() and p.dtype == torch.bfloat16

    def grid(meta: dict[str, Any]) -> tuple[int]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    _lora_matmul_kernel[grid](
        p,
        q,
        u,
        v,
        out if mask is None else mask,
        out if bias is None else bias,
        out,
        m,
        n,
        k,
        r,
        triton.next_power_of_2(m),
        *p.stride(),
        *q.stride(),
        *u.stride(),
        *v.stride(),
        *((0, 0) if mask is None else mask.stride()),
        *out.stride(),
        float(scaling),
        float(drop_scale),
        HAS_MASK=mask is not None,
        HAS_BIAS=bias is not None,
        R_BLOCK=r_block,
        PRECISION=_precision(p.dtype),
        UPCAST=upcast,
    )
    return out


def _dense_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The base weight as a dense tensor of ``dtype`` (dequantized when stored in NF4)."""
    dense = dequantize(weight) if is_quantized(weight) else weight
    return dense.detach().to(dtype)


class _FusedLoraLinear(torch.autograd.Function):
    """``x W^T + b + scaling * B(A(dropout(x)))`` on 2-D ``x``, with a fused Triton matmul."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
        dropout: float,
    ) -> torch.Tensor:
        dense = _dense_weight(weight, x.dtype)
        lora_x = x.to(lora_a.dtype)
        mask = None
        if dropout > 0:
            lora_x, mask = torch.native_dropout(lora_x, dropout, True)
            mask = mask.bool()
        xa = lora_x @ lora_a.t()
        b = None if bias is None else bias.detach()
        out = _lora_matmul(x, dense.t(), xa, lora_b.t(), scaling, x.dtype, bias=b)
        ctx.save_for_backward(x, weight, lora_a, lora_b, xa, mask)
        ctx.scaling = scaling
        ctx.dropout = dropout
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, lora_a, lora_b, xa, mask = ctx.saved_tensors
        need_x, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        grad = grad.contiguous()
        grad_lora = grad.to(lora_b.dtype)
        grad_xa = (grad_lora @ lora_b) * ctx.scaling
        drop_scale = 1.0 / (1.0 - ctx.dropout) if ctx.dropout > 0 else 1.0
        grad_x = grad_w = grad_bias = grad_a = grad_b = None
        if need_x:
            dense = _dense_weight(weight, x.dtype)
            grad_x = _lora_matmul(
                grad, dense, grad_xa, lora_a, 1.0, x.dtype, mask=mask, drop_scale=drop_scale
            )
        if need_a:
            lora_x = x.to(lora_a.dtype, copy=mask is not None)
            if mask is not None:  # the dropped input the forward's A saw, rebuilt from its mask
                lora_x.mul_(mask).mul_(drop_scale)
            grad_a = grad_xa.t() @ lora_x
        if need_b:
            grad_b = (grad_lora.t() @ xa) * ctx.scaling
        if need_w:
            grad_w = (grad.t() @ x.to(grad.dtype)).to(weight.dtype)
        if need_bias:
            grad_bias = grad.sum(0).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None, None


def _check(module: nn.Module, x: torch.Tensor) -> None:
    """Raise when the fused kernel cannot run for ``module`` on ``x``."""
    if not triton_available():
        raise RuntimeError(_MISSING)
    if x.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"the Triton LoRA kernel needs a CUDA device, but the input is on {x.device}; "
            "set use_triton: false to train on CPU"
        )
    dtype = _compute_dtype(x)
    if dtype not in _DTYPES:
        raise RuntimeError(
            f"the Triton LoRA kernel supports float32, bfloat16 and float16, got {dtype}"
        )
    if not torch.is_autocast_enabled(x.device.type) and module.weight.dtype != dtype:
        raise RuntimeError(
            f"the Triton LoRA kernel needs the input in the base weight's dtype "
            f"({module.weight.dtype}), got {dtype}; cast the input or run under torch.autocast"
        )
    if getattr(module, "use_dora", False):
        raise RuntimeError("the Triton LoRA kernel computes plain LoRA only; turn off use_dora")
    if _dropout_p(module) > 0 and getattr(module, "dropout_position", "pre") != "pre":
        raise RuntimeError("the Triton LoRA kernel supports dropout_position 'pre' only")


def _dropout_p(module: nn.Module) -> float:
    """The LoRA dropout probability in effect now (0 in eval mode or without dropout)."""
    drop = module.lora_dropout
    return float(drop.p) if isinstance(drop, nn.Dropout) and drop.training else 0.0


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the base matmul runs in: autocast's when it is on, else the input's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def fused_lora_linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``LoraLinear``'s forward through the fused Triton kernel (CUDA, or the interpreter)."""
    _check(module, x)
    a, b = module.lora_A.weight, module.lora_B.weight
    lead = x.shape[:-1]
    x2d = x.to(_compute_dtype(x)).reshape(-1, x.shape[-1])
    # A Conv1D's (in, out) weight goes in as its (out, in) view (dequantized first when NF4).
    weight = module.base_weight() if getattr(module, "fan_in_fan_out", False) else module.weight
    with torch.autocast(x.device.type, enabled=False):
        out = _FusedLoraLinear.apply(
            x2d,
            weight,
            module.bias,
            a,
            b.to(a.dtype),
            float(module.scaling),
            _dropout_p(module),
        )
    return out.reshape(*lead, out.shape[-1])
