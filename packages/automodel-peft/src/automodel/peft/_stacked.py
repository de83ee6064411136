"""LoRA on stacked expert weights: a rank-``r`` update per expert of a 3-D parameter ``[E, ., .]``.

Hugging Face PEFT adapts such a parameter through ``LoraConfig.target_parameters`` (its
``ParamWrapper``); this is the same adapter, in the same tensors:

* a weight ``[E, out, in]`` (transformers' MoE experts, automodel.moe's ``GroupedExperts``; a
  module whose ``is_transposed`` attribute is true stores ``[E, in, out]``, as gpt-oss does)
  gets ``lora_A.weight`` ``[r*E, in]`` (row ``e*r + k``) and ``lora_B.weight`` ``[out, r*E]``
  (column ``k*E + e``), and expert ``e`` computes with ``W[e] + scaling * B_e @ A_e``;
* the factors sit on the module that owns the weight, under peft's names: the last adapted
  parameter of a module (in the module's own parameter order) at ``<module>.lora_A.weight``,
  the one before it at ``<module>.base_layer.lora_A.weight``, and so on inwards (peft nests one
  wrapper per parameter, the last one outermost); the weight itself keeps its name.

The owner's class becomes a subclass whose attribute for each adapted parameter returns
``W + delta`` (computed once per forward and shared by every read inside it), so the module's
own forward, whatever it is, computes with the adapted weight; ``state_dict`` and
``named_parameters`` still see the frozen ``W``. Memory: each forward materialises one adapted
copy of every adapted weight, and the matmuls that read it keep it for the backward pass, so a
layer holds one extra copy of its adapted expert weights from its forward to its backward
(activation checkpointing frees it between the two). There is no dropout on these adapters
(the input of an expert cannot be factored out of a weight update), and no DoRA.

Expert parallelism: a weight that is a DTensor in the forward (each process holds some experts,
``Shard(0)``) while its factors are whole tensors gets the update of the experts it holds only,
computed from their rows of A and columns of B (the DTensor says where its shard sits), and
reads as a DTensor laid out as the weight. Each expert's factors then get their gradient on
the processes holding it, from every token routed to it there; averaging the factors'
gradients over the data-parallel processes (FSDP2, DDP) gives the one-process gradient, as it
does for the expert weights themselves. Outside a forward a DTensor weight reads as stored.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ._config import LoraConfig, LoraConfigError
from ._lora_linear import _default_lora_dtype, merge_weight

Block = tuple[slice, slice, slice]  # a part of a stacked weight: one slice per dimension
NEST = "base_layer"  # peft's name for the wrapped module, here the next parameter's adapter
FACTORS = ("lora_A", "lora_B")


class _Factor(nn.Module):
    """One LoRA factor: a module only so that its tensor is named ``<holder>.lora_A.weight``."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)


class _Nest(nn.Module):
    """The holder of the adapter of the next parameter inwards (peft's ``base_layer``)."""


class StackedLora:
    """The LoRA on the stacked weight ``owner.<name>`` ``[E, d1, d2]``, one update per expert.

    ``holder`` is the module whose ``lora_A``/``lora_B`` hold the factors: ``owner`` itself or
    a ``base_layer`` below it (``depth`` of them).
    """

    def __init__(
        self, owner: nn.Module, name: str, holder: nn.Module, depth: int, config: LoraConfig
    ) -> None:
        weight = owner._parameters[name]
        self.owner, self.name, self.holder, self.depth = owner, name, holder, depth
        self.transposed = bool(getattr(owner, "is_transposed", False))
        self.num_experts, d1, d2 = weight.shape
        self.in_features, self.out_features = (d1, d2) if self.transposed else (d2, d1)
        self.rank, self.alpha = config.dim, config.alpha
        self.use_rslora, self.use_dora, self.init_a = config.use_rslora, False, config.init_a
        self.scaling = config.scaling
        self.merged = self.disabled = False
        dtype = config.lora_dtype or _default_lora_dtype(weight.dtype)
        width = self.rank * self.num_experts
        factory = dict(device=weight.device, dtype=dtype)
        holder.lora_A = _Factor(torch.empty(width, self.in_features, **factory))
        holder.lora_B = _Factor(torch.empty(self.out_features, width, **factory))
        self.reset_lora_parameters()

    @property
    def lora_A(self) -> nn.Parameter:
        """``[r*E, in]``: expert ``e``'s A is rows ``e*r`` to ``e*r + r``."""
        return self.holder.lora_A.weight

    @property
    def lora_B(self) -> nn.Parameter:
        """``[out, r*E]``: expert ``e``'s B is columns ``e, E + e, ..., (r-1)*E + e``."""
        return self.holder.lora_B.weight

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        """A random (kaiming-uniform or gaussian, as a ``[r*E, in]`` matrix, as peft), B zero."""
        if self.lora_A.is_meta:
            return
        if self.init_a == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / self.rank)
        else:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self, block: Block | None = None) -> torch.Tensor:
        """``scaling * B_e @ A_e`` in the weight's stored layout ``[E, d1, d2]`` and the adapter
        dtype (float32 on CPU for 16-bit adapters); ``block``: only that part of it, from the
        factors of its experts."""
        a, b = self.lora_A, self.lora_B
        if a.device.type == "cpu" and a.dtype in (torch.float16, torch.bfloat16):
            return self.delta_from(a.float(), b.float(), block).to(a.dtype)
        return self.delta_from(a, b, block)

    def delta_from(
        self, lora_a: torch.Tensor, lora_b: torch.Tensor, block: Block | None = None
    ) -> torch.Tensor:
        """``scaling * B_e @ A_e`` from factors in this adapter's layout, as ``[E, d1, d2]``
        (``block``: that part, experts ``block[0]`` of it computed from their rows and columns)."""
        experts = slice(None) if block is None else block[0]
        a = lora_a.view(self.num_experts, self.rank, self.in_features)[experts]
        b = lora_b.view(self.out_features, self.rank, self.num_experts)[:, :, experts]
        delta = torch.bmm(b.permute(2, 0, 1), a) * self.scaling  # [experts, out, in]
        delta = delta.transpose(1, 2) if self.transposed else delta
        return delta if block is None else delta[:, block[1], block[2]]

    def adapted(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight + delta`` in ``weight``'s dtype (differentiable in the factors); an
        expert-parallel weight gets the update of its own experts (see the module's docs)."""
        return self._on_local(
            weight, lambda local, block: local + self.delta_weight(block).to(local.dtype)
        )

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """``W + delta`` in the weight's dtype (a copy; the weight itself when merged)."""
        weight = self.owner._parameters[self.name].detach()
        if self.merged:
            return weight.clone()
        return self._on_local(weight, lambda w, block: merge_weight(w, self.delta_weight(block)))

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the weight; the attribute then reads the weight as it is."""
        if not self.merged:
            self.owner._parameters[self.name].copy_(self.merged_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (subtract the update)."""
        if self.merged:
            weight = self.owner._parameters[self.name]
            unmerged = self._on_local(
                weight.detach(), lambda w, block: w - self.delta_weight(block).to(w.dtype)
            )
            weight.copy_(unmerged)
            self.merged = False

    def _on_local(
        self, weight: torch.Tensor, compute: Callable[[torch.Tensor, Block | None], torch.Tensor]
    ) -> torch.Tensor:
        """``compute(tensor, block)`` on ``weight``: on its local shard and the shard's
        ``block`` when it is expert-parallel (a DTensor with whole factors), the result laid
        out as ``weight``; otherwise on ``weight`` itself with ``block`` None."""
        if not _is_dtensor(weight) or _is_dtensor(self.lora_A):
            return compute(weight, None)
        from torch.distributed.tensor import DTensor

        local = compute(weight.to_local(), local_block(weight))
        return DTensor.from_local(
            local, weight.device_mesh, weight.placements, run_check=False,
            shape=weight.shape, stride=weight.stride(),
        )  # fmt: skip


def local_block(weight: torch.Tensor) -> Block:
    """Where this process's shard of the DTensor ``weight`` sits in the whole weight."""
    if any(placement.is_partial() for placement in weight.placements):
        raise RuntimeError(
            f"a stacked weight with placements {weight.placements} holds partial sums; LoRA on "
            "it needs each process's shard to be a part of the weight (Shard or Replicate)"
        )
    (chunk,) = weight.__create_chunk_list__()  # the shard's offset and size in each dimension
    return tuple(slice(o, o + n) for o, n in zip(chunk.offsets, chunk.sizes, strict=True))


def add_stacked_lora(owner: nn.Module, path: str, names: list[str], config: LoraConfig) -> None:
    """Adapt the stacked parameters ``names`` of ``owner`` (the module at ``path``, which
    ``config.rank_pattern``/``alpha_pattern`` see) in place, nested as peft nests them."""
    order = [n for n in owner._parameters if n in names]  # the module's own order
    for attr in (*FACTORS, NEST):
        if hasattr(owner, attr):
            cls = type(owner)
            raise LoraConfigError(
                f"{cls.__qualname__} already has an attribute {attr!r}; LoRA on its parameters "
                f"{order} would store its factors under that name (as peft does), so it cannot "
                "be adapted"
            )
    adapters: dict[str, StackedLora] = {}
    holder: nn.Module = owner
    for depth, name in enumerate(reversed(order)):  # the last one outermost
        if depth:
            nest = _Nest()
            holder.add_module(NEST, nest)
            holder = nest
        target = config.for_target(f"{path}.{name}")
        adapters[name] = StackedLora(owner, name, holder, depth, target)
    owner._lora_stacked = {name: adapters[name] for name in order}
    owner._lora_cache = None
    owner._lora_hooks = (
        owner.register_forward_pre_hook(_open_cache),
        owner.register_forward_hook(_close_cache, always_call=True),
    )
    owner.__class__ = _adapted_class(type(owner), tuple(order))


def remove_stacked_lora(owner: nn.Module) -> None:
    """Take the adapters off ``owner``: its class, attributes and parameters as they were."""
    for handle in owner._lora_hooks:
        handle.remove()
    for attr in (*FACTORS, NEST):
        if attr in owner._modules:
            delattr(owner, attr)
    for attr in ("_lora_stacked", "_lora_cache", "_lora_hooks"):
        owner.__dict__.pop(attr, None)
    owner.__class__ = owner.__class__._lora_base_class


def stacked_adapters(model: nn.Module) -> Iterator[tuple[str, str, StackedLora]]:
    """``(owner path, parameter name, adapter)`` for every adapted stacked parameter."""
    for path, module in model.named_modules():
        for name, adapter in module.__dict__.get("_lora_stacked", {}).items():
            yield path, name, adapter


def holder_path(owner_path: str, adapter: StackedLora) -> str:
    """Where the factors of ``adapter`` are, as a module path (``<owner>.base_layer...``)."""
    return ".".join([owner_path, *[NEST] * adapter.depth])


def _is_dtensor(tensor: torch.Tensor) -> bool:
    module = sys.modules.get("torch.distributed.tensor")  # imported by any DTensor's maker
    return module is not None and isinstance(tensor, module.DTensor)


def _open_cache(owner: nn.Module, args: object) -> None:
    owner._lora_cache = {}


def _close_cache(owner: nn.Module, args: object, output: object) -> None:
    owner._lora_cache = None


def _adapted_weight(owner: nn.Module, name: str) -> torch.Tensor:
    weight = owner._parameters[name]
    adapter = owner._lora_stacked[name]
    cache = owner.__dict__.get("_lora_cache")
    if adapter.merged or adapter.disabled or (cache is None and _is_dtensor(weight)):
        return weight  # a DTensor outside the forward: FSDP2's shard or expert-parallel
    if cache is None:
        return adapter.adapted(weight)
    if name not in cache:
        cache[name] = adapter.adapted(weight)
    return cache[name]


@functools.cache
def _adapted_class(base: type[nn.Module], names: tuple[str, ...]) -> type[nn.Module]:
    """``base`` with a property per adapted name (the parameter stays in ``_parameters``)."""

    def read(name: str) -> property:
        return property(lambda self: _adapted_weight(self, name), doc=f"{name} + its LoRA update")

    attrs = {name: read(name) for name in names}
    names_of = {"__module__": base.__module__, "__qualname__": base.__qualname__}
    return type(base.__name__, (base,), {**attrs, **names_of, "_lora_base_class": base})
