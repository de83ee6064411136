"""LoraLinear: an ``nn.Linear`` plus a low-rank update ``scaling * B @ A`` (optionally DoRA).

The wrapper owns the base ``weight`` and ``bias`` under their original names, so a
model's state_dict keeps its Hugging Face keys and gains only ``lora_A.weight``,
``lora_B.weight`` (and ``lora_magnitude_vector`` for DoRA) per adapted module.

A transformers ``Conv1D`` (GPT-2) is wrapped the same way: its weight stays in its own
``(in, out)`` layout (``fan_in_fan_out``, as peft calls it), A and B have the shapes they
have for an ``nn.Linear``, and every merge transposes the update to the stored layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._config import LoraConfig
from ._matching import conv1d_class, is_conv1d
from ._quant import dequantize, is_quantized


class LoraLinear(nn.Module):
    """``y = x W^T + b + scaling * B(A(dropout(x)))``; with DoRA the row norms are re-learned.

    ``base`` is an ``nn.Linear`` or a transformers ``Conv1D``; for a Conv1D
    (``fan_in_fan_out``) ``weight`` keeps the shape ``(in, out)`` and ``y = x W + b``.
    """

    def __init__(self, base: nn.Module, config: LoraConfig) -> None:
        super().__init__()
        self.fan_in_fan_out = is_conv1d(base)
        if self.fan_in_fan_out:
            self.in_features, self.out_features = base.weight.shape
        else:
            self.in_features = base.in_features
            self.out_features = base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank = config.dim
        self.alpha = config.alpha
        self.use_rslora = config.use_rslora
        self.use_dora = config.use_dora
        self.init_a = config.init_a
        self.dropout_position = config.dropout_position
        self.use_triton = config.use_triton
        self.scaling = config.scaling
        self.merged = False
        self.disabled = False
        self._merged_from: torch.Tensor | None = None
        device = base.weight.device
        dtype = config.lora_dtype or _default_lora_dtype(base.weight.dtype)
        # Built like peft builds them (two nn.Linear, then re-initialised), so the same
        # seed draws the same A in the same module order.
        self.lora_A = nn.Linear(self.in_features, self.rank, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(
            self.rank, self.out_features, bias=False, device=device, dtype=dtype
        )
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        if self.use_dora:
            self.lora_magnitude_vector = nn.Parameter(
                torch.empty(self.out_features, device=device, dtype=dtype)
            )
        self.reset_lora_parameters()

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        """A random (kaiming-uniform or gaussian), B zero, DoRA magnitude = row norms of W."""
        if self.lora_A.weight.is_meta:
            return
        if self.init_a == "gaussian":
            nn.init.normal_(self.lora_A.weight, std=1.0 / self.rank)
        else:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        if self.use_dora:
            self.lora_magnitude_vector.copy_(self._weight_norm(self.delta_weight()))

    def stored_weight(self) -> torch.Tensor:
        """The base weight, dense (dequantized when NF4), in its stored layout (Conv1D: in, out)."""
        return dequantize(self.weight) if is_quantized(self.weight) else self.weight

    def base_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The base weight as a dense ``(out, in)`` tensor (a Conv1D's transposed view)."""
        weight = self.stored_weight()
        weight = weight.T if self.fan_in_fan_out else weight
        return weight if dtype is None else weight.to(dtype)

    def _to_stored_layout(self, weight: torch.Tensor) -> torch.Tensor:
        """An ``(out, in)`` weight in this module's stored layout (a contiguous transpose for Conv1D)."""
        return weight.T.contiguous() if self.fan_in_fan_out else weight

    def _base_forward(self, x: torch.Tensor) -> torch.Tensor:
        # Conv1D: x @ W + b is F.linear with W^T (an NF4 weight is dequantized first, since
        # torchao's NF4Tensor cannot be transposed).
        weight = self.base_weight() if self.fan_in_fan_out else self.weight
        return F.linear(x, weight, self.bias)

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A`` in the adapter dtype (float32 on CPU for 16-bit adapters)."""
        a, b = self.lora_A.weight, self.lora_B.weight
        if a.device.type == "cpu" and a.dtype in (torch.float16, torch.bfloat16):
            return ((b.float() @ a.float()) * self.scaling).to(a.dtype)
        return (b @ a) * self.scaling

    def _weight_norm(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-output-row L2 norm of ``W + delta`` (DoRA's denominator)."""
        weight = self.base_weight(delta.dtype) + delta
        return torch.linalg.norm(weight, dim=1).to(weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.disabled:
            return self._base_forward(x)
        if self.use_triton:
            from ._triton_lora import fused_lora_linear

            return fused_lora_linear(self, x)
        result = self._base_forward(x)
        out_dtype = result.dtype
        lora_x = x.to(self.lora_A.weight.dtype)
        if self.use_dora:
            result = result + self._dora_update(lora_x, result)
        else:
            result = result + self._lora_update(lora_x) * self.scaling
        return result.to(out_dtype)

    def _lora_update(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout_position == "pre":
            return self.lora_B(self.lora_A(self.lora_dropout(x)))
        return self.lora_dropout(self.lora_B(self.lora_A(x)))

    def _dora_update(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """What DoRA adds to the base output: ``(m/||W+dW|| - 1) W x + m/||W+dW|| * dW x``."""
        delta = self.delta_weight().to(x.dtype)
        # The norm is treated as a constant (DoRA paper, section 4.3): no gradient through it.
        norm = self._weight_norm(delta.detach()).detach()
        scale = (self.lora_magnitude_vector / norm).view(1, -1)
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            base = result if self.bias is None else result - self.bias
        else:
            x = self.lora_dropout(x)
            base = F.linear(x, self.base_weight(x.dtype))
        lora = self.lora_B(self.lora_A(x))
        return (scale - 1) * base + scale * lora * self.scaling

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """``W + scaling * B @ A`` (DoRA: rescaled to the learned row norms) in the base dtype,
        in the stored layout (a Conv1D's ``(in, out)``)."""
        if self.merged:
            return self.stored_weight().detach().clone()
        magnitude = self.lora_magnitude_vector if self.use_dora else None
        return self._to_stored_layout(
            merge_weight(self.base_weight(), self.delta_weight(), magnitude)
        )

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into ``weight`` (dequantizing an NF4 weight); forward then skips it."""
        if self.merged:
            return
        merged = self.merged_weight()
        if is_quantized(self.weight):
            self._merged_from = self.weight
            self.weight = nn.Parameter(merged, requires_grad=False)
        else:
            self._merged_from = self.weight.detach().clone() if self.use_dora else None
            self.weight.copy_(merged)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`: restore the saved NF4/DoRA base, else subtract the update."""
        if not self.merged:
            return
        if self._merged_from is not None and is_quantized(self._merged_from):
            self.weight = self._merged_from
        elif self._merged_from is not None:
            self.weight.copy_(self._merged_from)
        else:
            delta = self._to_stored_layout(self.delta_weight())
            self.weight.sub_(delta.to(self.weight.dtype))
        self._merged_from = None
        self.merged = False

    def to_linear(self) -> nn.Module:
        """A plain ``nn.Linear`` (a ``Conv1D`` when it wrapped one) with the current (merged or
        base) weight, dequantized if NF4."""
        weight = self.stored_weight()
        if self.fan_in_fan_out:
            with torch.device("meta"):
                linear = conv1d_class()(self.out_features, self.in_features)  # Conv1D(nf, nx)
        else:
            linear = nn.Linear(
                self.in_features,
                self.out_features,
                bias=self.bias is not None,
                device="meta",
                dtype=weight.dtype,
            )
        linear.weight = nn.Parameter(weight.detach(), requires_grad=self.weight.requires_grad)
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        variant = (", dora" if self.use_dora else "") + (
            ", fan_in_fan_out" if self.fan_in_fan_out else ""
        )
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}{variant}"
            f"{', merged' if self.merged else ''}"
        )


def merge_weight(
    base: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor | None = None
) -> torch.Tensor:
    """``base + delta`` in float32, DoRA-rescaled to ``magnitude`` row norms, in ``base``'s dtype."""
    merged = base.to(torch.float32) + delta.to(torch.float32)
    if magnitude is not None:
        norm = torch.linalg.norm(merged, dim=1)
        merged = (magnitude.float() / norm).view(-1, 1) * merged
    return merged.to(base.dtype)


def _default_lora_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """float32 adapters on 16-bit bases, as peft does; otherwise the base dtype."""
    if base_dtype in (torch.float16, torch.bfloat16) or not base_dtype.is_floating_point:
        return torch.float32
    return base_dtype
