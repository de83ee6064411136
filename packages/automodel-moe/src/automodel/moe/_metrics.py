"""Model-level helpers: aux loss to add to the training loss, bias updates, load metrics."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from automodel.moe._router import TopKRouter


def _routers(model: nn.Module) -> list[tuple[str, TopKRouter]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, TopKRouter)]


def _layer_key(name: str, ordinal: int) -> str:
    match = re.search(r"(?:^|\.)layers\.(\d+)\.", name + ".")
    return f"layer_{match.group(1)}" if match else f"moe_{ordinal}"


@contextlib.contextmanager
def routing_mask(model: nn.Module, attention_mask: torch.Tensor | None) -> Iterator[None]:
    """Inside, the routers count only tokens where ``attention_mask`` is 1 (load, bias, aux loss).

    Tokens are still routed and computed; padding just does not count. Keep the backward inside
    too when activation checkpointing recomputes the forward. ``None``: every token counts.
    """
    set_routing_mask(model, attention_mask)
    try:
        yield
    finally:
        set_routing_mask(model, None)


def set_routing_mask(model: nn.Module, attention_mask: torch.Tensor | None) -> None:
    """What ``routing_mask`` sets on entry (``None``: what it sets on exit), for code that
    cannot hold a ``with`` block around forward and backward (pipeline stage hooks)."""
    mask = None if attention_mask is None else attention_mask.reshape(-1).bool()
    for _, router in _routers(model):
        router.token_mask = mask


@contextlib.contextmanager
def uncounted(model: nn.Module) -> Iterator[None]:
    """Inside, forwards leave the routers' counts as they found them: expert load, bias counts
    and the aux-loss metrics (for forwards that are not training steps, such as the shape probe
    a pipeline schedule runs before its first micro-batch)."""
    saved = [
        (r, r.load_counts.clone(), r.bias_counts.clone(), r.aux_loss_sum, r.aux_loss_calls)
        for _, r in _routers(model)
    ]
    try:
        yield
    finally:
        for router, load, bias, aux_sum, aux_calls in saved:
            router.load_counts.copy_(load)
            router.bias_counts.copy_(bias)
            router.aux_loss_sum, router.aux_loss_calls = aux_sum, aux_calls


class _AuxLossGrad(torch.autograd.Function):
    """Identity on ``output``; in backward, gradient 1 for ``aux_loss`` as well."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, aux_loss: torch.Tensor) -> torch.Tensor:
        ctx.aux_shape, ctx.aux_dtype = aux_loss.shape, aux_loss.dtype
        return output

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad, torch.ones(ctx.aux_shape, dtype=ctx.aux_dtype, device=grad.device)


def attach_aux_loss(output: torch.Tensor, aux_loss: torch.Tensor) -> torch.Tensor:
    """``output`` unchanged, carrying ``aux_loss`` into backward as if it were added to the loss.

    For a balancing loss that cannot be added to the loss where it is computed: a pipeline
    stage's, whose loss exists on the last stage only. Weight ``aux_loss`` as the loss is
    weighted; every backward through the result adds its gradient once.
    """
    return _AuxLossGrad.apply(output, aux_loss)


def moe_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum over layers of the coefficient-weighted aux loss of the last forward (None if none)."""
    losses = [r.aux_loss for _, r in _routers(model) if r.aux_loss is not None]
    if not losses:
        return None
    return torch.stack([loss.float() for loss in losses]).sum()


@torch.no_grad()
def update_moe_bias(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Call after each optimizer step: move every router's balancing bias toward equal load.

    When torch.distributed is initialised the token counts are summed over ``group`` (default:
    the world) first, so every rank applies the same update.
    """
    routers = [r for _, r in _routers(model) if r.e_score_correction_bias is not None]
    if not routers:
        return
    counts = torch.stack([r.bias_counts for r in routers])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts, group=group)
    for router, layer_counts in zip(routers, counts, strict=True):
        router.update_bias(layer_counts)


def expert_load(model: nn.Module) -> dict[str, torch.Tensor]:
    """Tokens routed to each expert since the last ``moe_metrics(reset=True)``, per MoE layer."""
    return {
        _layer_key(name, i): r.load_counts.detach().clone()
        for i, (name, r) in enumerate(_routers(model))
    }


@torch.no_grad()
def moe_metrics(
    model: nn.Module,
    reset: bool = True,
    sum_over: dist.ProcessGroup | None = None,
    parts_group: dist.ProcessGroup | None = None,
) -> dict[str, float]:
    """Flat load-balance metrics since the last reset: this rank's tokens, or with ``sum_over``
    (a collective) the tokens of every rank of that group, e.g. the data-parallel ranks.

    ``parts_group``: ranks that each hold other layers of the model (pipeline stages; a
    collective): every rank returns the metrics of all their layers.

    Per layer: ``moe/layer_<i>/imbalance`` (max / mean tokens per expert, 1.0 is perfect),
    ``moe/layer_<i>/dead_experts`` (experts that got no token) and, with ``aux_loss``
    balancing, ``moe/layer_<i>/aux_loss`` (coefficient-weighted, averaged over forwards).
    Aggregates: ``moe/imbalance_max``, ``moe/imbalance_mean`` and ``moe/aux_loss`` (the sum
    over layers). Layers that saw no token since the reset are skipped.
    """
    routers = _routers(model)
    loads = [r.load_counts.clone() for _, r in routers]
    aux = [[float(r.aux_loss_sum), float(r.aux_loss_calls)] for _, r in routers]
    if sum_over is not None and routers:
        loads, aux = _summed(loads, aux, sum_over)
    layers = {
        _layer_key(name, i): (load, *pair)
        for i, ((name, _), load, pair) in enumerate(zip(routers, loads, aux, strict=True))
    }
    if parts_group is not None and dist.get_world_size(parts_group) > 1:
        layers = _gathered(layers, parts_group)
    if reset:
        for _, router in routers:
            router.load_counts.zero_()
            router.aux_loss_sum, router.aux_loss_calls = 0.0, 0
    return _layer_metrics(layers)


def _layer_metrics(layers: dict[str, tuple[torch.Tensor, float, float]]) -> dict[str, float]:
    """The metrics of ``moe_metrics`` from each layer's (load, aux-loss sum, aux-loss calls)."""
    metrics: dict[str, float] = {}
    imbalances, aux_total, has_aux = [], 0.0, False
    for layer, (load, aux_sum, aux_calls) in layers.items():
        key = f"moe/{layer}"
        if load.sum() > 0:
            imbalance = float(load.max() / load.mean())
            metrics[f"{key}/imbalance"] = imbalance
            metrics[f"{key}/dead_experts"] = float((load == 0).sum())
            imbalances.append(imbalance)
        if aux_calls:
            metrics[f"{key}/aux_loss"] = aux_sum / aux_calls
            aux_total += aux_sum / aux_calls
            has_aux = True
    if imbalances:
        metrics["moe/imbalance_max"] = max(imbalances)
        metrics["moe/imbalance_mean"] = sum(imbalances) / len(imbalances)
    if has_aux:
        metrics["moe/aux_loss"] = aux_total
    return metrics


def _gathered(
    layers: dict[str, tuple[torch.Tensor, float, float]], group: dist.ProcessGroup
) -> dict[str, tuple[torch.Tensor, float, float]]:
    """The layers of every rank of ``group`` (host objects), in layer order."""
    mine = {
        key: (load.double().cpu(), aux_sum, calls) for key, (load, aux_sum, calls) in layers.items()
    }
    parts: list[dict | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, mine, group=group)
    merged = {key: value for part in parts for key, value in (part or {}).items()}
    return {key: merged[key] for key in sorted(merged, key=_layer_number)}


def _layer_number(key: str) -> int:
    return int(key.removeprefix("layer_")) if key.startswith("layer_") else -1


def _summed(
    loads: list[torch.Tensor], aux: list[list[float]], group: dist.ProcessGroup
) -> tuple[list[torch.Tensor], list[list[float]]]:
    """Every rank's expert loads and aux-loss sums/calls of ``group``, summed, in one all-reduce."""
    flat = torch.cat(
        [load.double().cpu() for load in loads] + [torch.tensor(aux).flatten().double()]
    )
    if "nccl" in str(dist.get_backend(group)):
        flat = flat.cuda()
    dist.all_reduce(flat, group=group)
    flat = flat.cpu()
    sizes = [load.numel() for load in loads]
    summed = list(flat[: sum(sizes)].split(sizes))
    pairs = flat[sum(sizes) :].view(-1, 2).tolist()
    return [s.to(loads[0].dtype) for s in summed], pairs
