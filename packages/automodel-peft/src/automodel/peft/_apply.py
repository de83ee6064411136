"""Put LoRA on a model, take it off, merge it, and report what is trainable."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ._config import LoraConfig, LoraConfigError, key_matches
from ._lora_linear import LoraLinear
from ._matching import (
    few_names,
    pattern_matches,
    select_linear_modules,
    select_stacked_parameters,
)
from ._quant import check_nf4, is_quantized, quantize_nf4
from ._stacked import (
    StackedLora,
    add_stacked_lora,
    holder_path,
    remove_stacked_lora,
    stacked_adapters,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraSummary:
    """What :func:`apply_lora` did: modules wrapped, stacked weights adapted, parameter counts."""

    modules: tuple[str, ...]
    trainable_params: int
    total_params: int
    quantized_modules: int = 0
    parameters: tuple[str, ...] = ()  # stacked expert weights (target_parameters)

    @property
    def trainable_percent(self) -> float:
        """Trainable parameters as a percentage of all parameters."""
        return 100.0 * self.trainable_params / max(self.total_params, 1)

    def __str__(self) -> str:
        quant = f", {self.quantized_modules} base weights in NF4" if self.quantized_modules else ""
        stacked = f" and {len(self.parameters)} stacked weights" if self.parameters else ""
        return (
            f"LoRA on {len(self.modules)} modules{stacked}{quant}: {self.trainable_params:,} trainable "
            f"parameters of {self.total_params:,} ({self.trainable_percent:.3f}%)"
        )


def apply_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Wrap the selected linear modules of ``model`` in place, adapt the selected stacked
    weights (``target_parameters``), and freeze everything else.

    Linear modules are ``nn.Linear`` and transformers ``Conv1D`` (GPT-2) whose forward is the
    plain linear map; subclasses that override ``forward`` (MoE routers) are never wrapped
    (see :func:`~automodel.peft._matching.select_linear_modules`). Stacked weights are 3-D
    ``[E, ., .]`` parameters such as MoE experts' (see :mod:`automodel.peft._stacked`).
    Each target takes its rank and alpha from ``config.rank_pattern``/``alpha_pattern`` where
    a key matches its path; a key that matches no target is a LoraConfigError.
    Returns ``model``; :func:`lora_summary` reports what was wrapped (it is also logged).
    """
    return add_lora(model, config, unused_patterns_ok=False)


def add_lora(model: nn.Module, config: LoraConfig, *, unused_patterns_ok: bool) -> nn.Module:
    """:func:`apply_lora`; with ``unused_patterns_ok`` a pattern key may match no target (as
    in peft, whose files may hold such keys)."""
    paths = select_linear_modules(model, config)
    stacked = select_stacked_parameters(model, config)
    if not unused_patterns_ok:
        targets = [*paths, *(f"{path}.{name}" for path, names in stacked.items() for name in names)]
        _check_pattern_keys(config, targets)
    quantized = set(_quantized_paths(paths, config))
    for path in paths:  # check every module before changing any
        if path in quantized:
            check_nf4(model.get_submodule(path).weight, config.nf4_block_size, path)
    for param in model.parameters():
        param.requires_grad_(False)
    for path in paths:
        parent, name = _parent(model, path)
        original = getattr(parent, name)
        wrapped = LoraLinear(original, config.for_target(path))
        # Keep the train/eval mode of the module it replaces: a new nn.Module starts in train
        # mode, which would turn on LoRA dropout inside a model already in eval mode.
        wrapped.train(original.training)
        if path in quantized:
            wrapped.weight = quantize_nf4(wrapped.weight, config.nf4_block_size, path)
        setattr(parent, name, wrapped)
    for path, names in stacked.items():
        add_stacked_lora(model.get_submodule(path), path, names, config)
    logger.info("%s", lora_summary(model))
    return model


def _quantized_paths(paths: list[str], config: LoraConfig) -> list[str]:
    """The adapted modules whose base weight `quantize_base` stores quantized: all of them but
    those `quantize_skip` names (each of its patterns must name one)."""
    if config.quantize_base is None:
        return []
    for pattern in config.quantize_skip:
        if not any(pattern_matches(pattern, path) for path in paths):
            raise LoraConfigError(
                f"quantize_skip pattern {pattern!r} matches no adapted module; adapted: "
                f"{few_names(paths)}"
            )
    return [p for p in paths if not any(pattern_matches(s, p) for s in config.quantize_skip)]


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoraLinear]]:
    """``(path, module)`` for every LoRA-wrapped linear, in module order."""
    for path, module in model.named_modules():
        if isinstance(module, LoraLinear):
            yield path, module


def lora_parameters(model: nn.Module) -> Iterator[tuple[str, StackedLora]]:
    """``(parameter path, adapter)`` for every adapted stacked weight, in module order."""
    for path, name, adapter in stacked_adapters(model):
        yield f"{path}.{name}", adapter


def lora_summary(model: nn.Module) -> LoraSummary:
    """Modules and stacked weights carrying LoRA, trainable/total parameter counts (NF4
    counted unpacked)."""
    modules = tuple(path for path, _ in lora_modules(model))
    params = list({id(p): p for p in model.parameters()}.values())
    return LoraSummary(
        modules=modules,
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_params=sum(p.numel() for p in params),
        quantized_modules=sum(is_quantized(m.weight) for _, m in lora_modules(model)),
        parameters=tuple(path for path, _ in lora_parameters(model)),
    )


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors under the model's own parameter names (``<path>.lora_A.weight``, ...;
    a stacked weight's under peft's names, see :mod:`automodel.peft._stacked`)."""
    out = {}
    for path, module in lora_modules(model):
        for name, tensor in _adapter_tensors(module).items():
            out[f"{path}.{name}"] = tensor
    for path, _, adapter in stacked_adapters(model):
        holder = holder_path(path, adapter)
        out[f"{holder}.lora_A.weight"] = adapter.lora_A
        out[f"{holder}.lora_B.weight"] = adapter.lora_B
    return out


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (forward then costs what the base costs)."""
    for module in _adapted(model):
        module.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora`, so training the adapters can continue."""
    for module in _adapted(model):
        module.unmerge()
    return model


def unload_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRA wrapper by a plain ``nn.Linear`` (or ``Conv1D``) holding its current
    weight, and take the adapters off stacked weights (their modules get their class back).

    Call :func:`merge_lora` first to keep what was learned; otherwise the adapters are
    dropped. The result has the base model's module types and state_dict keys again.
    """
    for path, module in list(lora_modules(model)):
        parent, name = _parent(model, path)
        setattr(parent, name, module.to_linear())
    owners = {id(a.owner): a.owner for _, _, a in stacked_adapters(model)}
    for owner in owners.values():
        remove_stacked_lora(owner)
    return model


@contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model alone inside the block (e.g. a reference model for DPO or KD)."""
    modules = list(_adapted(model))
    previous = [m.disabled for m in modules]
    for m in modules:
        m.disabled = True
    try:
        yield model
    finally:
        for m, was in zip(modules, previous, strict=True):
            m.disabled = was


def _adapted(model: nn.Module) -> Iterator[LoraLinear | StackedLora]:
    """Every LoRA-wrapped linear and every adapted stacked weight."""
    yield from (m for _, m in lora_modules(model))
    yield from (a for _, a in lora_parameters(model))


def _check_pattern_keys(config: LoraConfig, targets: list[str]) -> None:
    patterns = {"rank_pattern": config.rank_pattern, "alpha_pattern": config.alpha_pattern}
    for name, pattern in patterns.items():
        for key in pattern:
            if not any(key_matches(key, path) for path in targets):
                raise LoraConfigError(
                    f"{name} key {key!r} matches none of the {len(targets)} adapted targets "
                    f"({few_names(targets, 4)}); a key is a regex matched against the end of a "
                    "target's path, from a '.' (as in peft): e.g. 'experts.down_proj' or "
                    r"'layers\.0\.self_attn\.q_proj'"
                )


def _adapter_tensors(module: LoraLinear) -> dict[str, torch.Tensor]:
    tensors = {"lora_A.weight": module.lora_A.weight, "lora_B.weight": module.lora_B.weight}
    if module.use_dora:
        tensors["lora_magnitude_vector"] = module.lora_magnitude_vector
    return tensors


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), name
