"""Grouped experts: stacked weights, tokens sorted by expert once, grouped matmuls."""

from __future__ import annotations

import functools
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from automodel.moe._config import MoEConfig


class _LoopGroupedMM(torch.autograd.Function):
    """``y[rows of e] = x[rows of e] @ w[e].T`` over contiguous per-expert row slices.

    Forward and backward write each expert's slice into one preallocated output, so there is
    no per-expert autograd node (which would materialise a full-size zero gradient per slice).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, bounds: list[int]) -> torch.Tensor:
        y = x.new_empty(x.shape[0], w.shape[1])
        for e in range(w.shape[0]):
            start, end = bounds[e], bounds[e + 1]
            if end > start:
                torch.mm(x[start:end], w[e].t(), out=y[start:end])
        ctx.save_for_backward(x, w)
        ctx.bounds = bounds
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        bounds = ctx.bounds
        grad = grad.contiguous()
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(w) if ctx.needs_input_grad[1] else None
        for e in range(w.shape[0]):
            start, end = bounds[e], bounds[e + 1]
            if end == start:
                if grad_w is not None:
                    grad_w[e].zero_()
                continue
            g = grad[start:end]
            if grad_x is not None:
                torch.mm(g, w[e], out=grad_x[start:end])
            if grad_w is not None:
                torch.mm(g.t(), x[start:end], out=grad_w[e])
        return grad_x, grad_w, None


@functools.cache
def _grouped_mm_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Probe once per device and dtype: does ``torch._grouped_mm`` have a kernel here?

    Runs under ``no_grad`` so that it saves nothing for backward: a probe inside an activation
    checkpoint region would otherwise save tensors the recomputation does not.
    """
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        with torch.no_grad():
            x = torch.ones(32, 16, device=device, dtype=dtype)
            w = torch.ones(2, 16, 16, device=device, dtype=dtype)
            offs = torch.tensor([16, 32], device=device, dtype=torch.int32)
            torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def grouped_mm_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``backend="auto"`` uses ``torch._grouped_mm`` for weights of this device/dtype.

    Yes where the kernel runs (a cached probe): on CPU (torch >= 2.9) for any float dtype,
    on CUDA for bf16 on compute capability >= 8.0. Otherwise the per-expert loop is used.
    """
    if device.type == "cuda":
        if dtype != torch.bfloat16 or torch.cuda.get_device_capability(device) < (8, 0):
            return False
    elif device.type != "cpu":
        return False
    return _grouped_mm_works(device, dtype)


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """``"grouped_mm"`` or ``"loop"`` for a configured backend (``"auto"`` decides here)."""
    if backend == "auto":
        return "grouped_mm" if grouped_mm_available(device, dtype) else "loop"
    return backend


def _grouped_linear(
    x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, bounds: list[int] | None
) -> torch.Tensor:
    """``x`` ``[S, in]`` sorted by expert, ``w`` ``[E, out, in]`` -> ``[S, out]``.

    ``offsets``: int32 cumulative row counts (``torch._grouped_mm``); ``bounds``: the same as
    a list with a leading 0, or None to use ``torch._grouped_mm``.
    """
    x = x.to(w.dtype)
    if bounds is None:
        return torch._grouped_mm(x, w.transpose(-2, -1), offs=offsets)
    return _LoopGroupedMM.apply(x, w, bounds)


def activate_gated(gate: torch.Tensor, up: torch.Tensor, config: MoEConfig) -> torch.Tensor:
    """``act(gate) * up`` for the gated activations (see ``MoEConfig``), clamped first if set."""
    limit = config.activation_limit
    if limit is not None:
        gate = gate.clamp(max=limit)
        up = up.clamp(min=-limit, max=limit)
    if config.activation == "swiglu_oai":
        return gate * torch.sigmoid(gate * config.activation_alpha) * (up + 1)
    return (F.silu(gate) if config.activation == "swiglu" else F.gelu(gate)) * up


def activate(h: torch.Tensor, config: MoEConfig) -> torch.Tensor:
    """The expert activation; gated ones split ``h`` as ``[gate | up]`` or, interleaved,
    ``[g0, u0, g1, u1, ...]``."""
    if config.gated:
        if config.gate_up_interleaved:
            gate, up = h[..., ::2], h[..., 1::2]
        else:
            gate, up = h.chunk(2, dim=-1)
        return activate_gated(gate, up, config)
    if config.activation == "gelu":
        return F.gelu(h)
    return torch.square(F.relu(h))  # relu2


class GroupedExperts(nn.Module):
    """``E`` expert MLPs stored stacked, in the Hugging Face v5 layout.

    Gated activations: ``gate_up_proj`` ``[E, 2I, H]`` (gate rows first) and ``down_proj``
    ``[E, H, I]``; non-gated: ``up_proj`` ``[E, I, H]`` and ``down_proj`` (``H``: ``expert_dim``).
    With ``transposed_experts`` each is stored ``[E, in, out]`` instead, and with
    ``expert_bias`` each has a bias ``<name>_bias`` ``[E, out]`` (gpt-oss's layout).
    ``dispatcher`` (optional, for expert parallelism) is a ``TokenDispatcher``:
    ``dispatch(x, topk_ids, topk_weights) -> (rows sorted by local expert, tokens per local
    expert, handle)`` and ``combine(y, handle)``; this module then holds only its local experts.
    """

    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.config = config
        self.num_experts = config.n_routed_experts
        e, h, i = config.n_routed_experts, config.expert_dim, config.moe_intermediate_size
        in_name = "gate_up_proj" if config.gated else "up_proj"
        in_width = 2 * i if config.gated else i
        for name, (out, inp) in ((in_name, (in_width, h)), ("down_proj", (h, i))):
            shape = (e, inp, out) if config.transposed_experts else (e, out, inp)
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))
            if config.expert_bias:
                self.register_parameter(f"{name}_bias", nn.Parameter(torch.empty(e, out)))
        self.dispatcher: Any = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every expert matrix like ``nn.Linear`` (uniform, fan-in scaled)."""
        down_bias = self._parameters.get("down_proj_bias")
        for w, bias in ((self.in_proj, self.in_proj_bias), (self.down_proj, down_bias)):
            fan_in = w.shape[-2] if self.config.transposed_experts else w.shape[-1]
            bound = fan_in**-0.5
            nn.init.uniform_(w, -bound, bound)
            if bias is not None:
                nn.init.uniform_(bias, -bound, bound)

    @property
    def in_proj(self) -> nn.Parameter:
        """The first projection: ``gate_up_proj`` or ``up_proj``."""
        return self.gate_up_proj if self.config.gated else self.up_proj

    @property
    def is_transposed(self) -> bool:
        """Weights stored ``[E, in, out]`` (transformers' name for it on its expert modules)."""
        return self.config.transposed_experts

    @property
    def in_proj_bias(self) -> nn.Parameter | None:
        """The first projection's bias (None without ``expert_bias``)."""
        name = "gate_up_proj_bias" if self.config.gated else "up_proj_bias"
        return self._parameters.get(name)

    def ffn(
        self,
        x_sorted: torch.Tensor,
        counts: torch.Tensor,
        row_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Expert MLPs on rows sorted by (local) expert, ``counts`` rows each -> ``[S, H]``.

        ``row_weights`` ``[S]``, when given, scale each row's output (applied before a
        ``down_proj`` without bias, which is linear, so it equals scaling the output).
        """
        dtype = x_sorted.dtype
        in_proj, down_proj = (self._out_in(w, dtype) for w in (self.in_proj, self.down_proj))
        down_bias = self._parameters.get("down_proj_bias")
        backend = resolve_backend(self.config.backend, x_sorted.device, down_proj.dtype)
        offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
        bounds = [0, *offsets.tolist()] if backend == "loop" else None  # one host sync
        row_expert = None  # each row's (local) expert, for the biases
        if self.config.expert_bias:
            experts = torch.arange(counts.numel(), device=counts.device)
            row_expert = experts.repeat_interleave(counts, output_size=x_sorted.shape[0])
        h = _grouped_linear(x_sorted, in_proj, offsets, bounds)
        h = activate(_add_bias(h, self.in_proj_bias, row_expert), self.config)
        scale = None if row_weights is None else row_weights.unsqueeze(-1)
        if scale is not None and down_bias is None:
            h = h * scale.to(h.dtype)
        y = _add_bias(_grouped_linear(h, down_proj, offsets, bounds), down_bias, row_expert)
        if scale is not None and down_bias is not None:
            y = y * scale.to(y.dtype)
        return y

    def _out_in(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """This rank's ``weight`` in ``dtype``, as ``[E, out, in]`` (a view when transposed)."""
        weight = _local(weight, dtype)
        return weight.transpose(-2, -1) if self.config.transposed_experts else weight

    def forward(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> torch.Tensor:
        """``x`` ``[T, H]``, ``topk_ids``/``topk_weights`` ``[T, k]`` -> ``[T, H]``."""
        if self.dispatcher is not None:
            rows, counts, handle = self.dispatcher.dispatch(x, topk_ids, topk_weights)
            y = self.ffn(rows, counts)
            return self.dispatcher.combine(y, handle).to(x.dtype)
        top_k = topk_ids.shape[1]
        flat_ids = topk_ids.reshape(-1)
        order = torch.argsort(flat_ids, stable=True)
        counts = torch.bincount(flat_ids, minlength=self.num_experts)
        token_of_row = torch.div(order, top_k, rounding_mode="floor")
        rows = x.index_select(0, token_of_row)
        row_weights = topk_weights.reshape(-1).index_select(0, order)
        y = self.ffn(rows, counts, row_weights)
        return combine_rows(y, order, top_k, scatter=y.device.type == "cpu").to(x.dtype)


def _add_bias(
    h: torch.Tensor, bias: torch.Tensor | None, row_expert: torch.Tensor | None
) -> torch.Tensor:
    """``h`` ``[S, out]`` plus each row's expert's bias (``bias`` ``[E, out]``; None: none)."""
    if bias is None or row_expert is None:
        return h
    return h + _local(bias, h.dtype).index_select(0, row_expert)


def _local(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """This rank's experts of ``weight`` (a DTensor once expert-parallel) in the compute dtype.

    Expert-parallel weights are left out of FSDP2's mixed precision, so they are cast here to
    the dtype of the activations (a differentiable no-op when they already match).
    """
    tensor_module = sys.modules.get("torch.distributed.tensor")  # imported by any DTensor's maker
    if tensor_module is not None and isinstance(weight, tensor_module.DTensor):
        weight = weight.to_local()
    return weight.to(dtype)


def combine_rows(y: torch.Tensor, order: torch.Tensor, top_k: int, scatter: bool) -> torch.Tensor:
    """Sum the expert-sorted rows ``y`` ``[T*k, H]`` back into tokens ``[T, H]``.

    ``scatter``: one ``index_add`` (deterministic and cheapest on CPU); otherwise un-permute
    and sum over the top-k slots (deterministic on CUDA, where ``index_add`` uses atomics).
    """
    num_tokens = order.numel() // top_k
    if scatter:
        token_of_row = torch.div(order, top_k, rounding_mode="floor")
        return y.new_zeros(num_tokens, y.shape[1]).index_add(0, token_of_row, y)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return y.index_select(0, inverse).view(num_tokens, top_k, -1).sum(dim=1)
