"""The Strategy protocol, decoder-block discovery, activation checkpointing, build_strategy."""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh


@runtime_checkable
class Strategy(Protocol):
    """How a model is spread over the data-parallel ranks of a mesh."""

    name: str

    def parallelize(
        self,
        model: nn.Module,
        mesh: DeviceMesh | None = None,
        ignored_params: Collection[nn.Parameter] | None = None,
    ) -> nn.Module:
        """Return the model ready to train on ``mesh`` (it may be wrapped or modified in place).

        ``ignored_params`` are neither sharded nor reduced (expert-parallel weights, whose
        gradients the caller reduces over its own group).
        """
        ...


def _outermost(modules: Iterable[tuple[str, nn.Module]]) -> list[nn.Module]:
    """The modules of ``modules`` (name, module) not nested inside another one of them."""
    chosen: list[tuple[str, nn.Module]] = []
    for name, module in modules:
        if any(name.startswith(prefix + ".") for prefix, _ in chosen):
            continue
        chosen.append((name, module))
    return [module for _, module in chosen]


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model (decoder layers, vision encoder layers...), outermost first.

    Modules whose class name is in the model's ``_no_split_modules`` (the Hugging Face
    convention) when it has any; otherwise the children of every ``nn.ModuleList`` whose
    children all share one class (``model.model.layers`` and the like). Blocks nested inside
    another block are left out.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    if names:
        found = [(n, m) for n, m in model.named_modules() if n and type(m).__name__ in names]
        if found:
            return _outermost(found)
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            kinds = {type(child) for child in module}
            if len(kinds) == 1:
                found.extend((f"{name}.{i}" if name else str(i), c) for i, c in enumerate(module))
    return _outermost(found)


def apply_activation_checkpointing(blocks: Iterable[nn.Module]) -> None:
    """Recompute each block's activations in backward (non-reentrant, composable).

    Uses ``torch.distributed._composable.checkpoint``: hooks, no wrapper module, so parameter
    names (and hence checkpoints and adapter matching) do not change. Apply before sharding.
    """
    from torch.distributed._composable import checkpoint

    for block in blocks:
        checkpoint(block)


def _place(model: nn.Module, mesh: DeviceMesh | None) -> nn.Module:
    """Move a model that is not on the meta device to this process's device of ``mesh``."""
    if mesh is None or mesh.device_type != "cuda":
        return model
    if any(p.is_meta for p in model.parameters()):
        return model
    return model.to(torch.device("cuda", torch.cuda.current_device()))


@dataclass
class NoStrategy:
    """No data parallelism: the model is only placed on the mesh's device (if any)."""

    name: ClassVar[str] = "none"
    activation_checkpointing: bool = False

    def parallelize(
        self,
        model: nn.Module,
        mesh: DeviceMesh | None = None,
        ignored_params: Collection[nn.Parameter] | None = None,
    ) -> nn.Module:
        if self.activation_checkpointing:
            apply_activation_checkpointing(decoder_blocks(model))
        return _place(model, mesh)


def _strategies() -> dict[str, type]:
    from ._ddp import DDPStrategy
    from ._fsdp import FSDP2Strategy

    return {"fsdp2": FSDP2Strategy, "ddp": DDPStrategy, "none": NoStrategy}


def build_strategy(name: str, **options: Any) -> Strategy:
    """A strategy by name: ``"fsdp2"``, ``"ddp"`` or ``"none"``, with its keyword options."""
    strategies = _strategies()
    if name not in strategies:
        raise ValueError(
            f"unknown distributed strategy {name!r}; valid strategies: {', '.join(strategies)}"
        )
    cls = strategies[name]
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"strategy {name!r} has no option(s) {', '.join(unknown)}; "
            f"its options: {', '.join(accepted) or '(none)'}"
        )
    return cls(**options)
