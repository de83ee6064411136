"""Refuse to save weights that hold NaN or inf: such a checkpoint must never become LATEST."""

from __future__ import annotations

import torch

from ._errors import CheckpointError


class NonFiniteWeightsError(CheckpointError):
    """The model to save holds NaN or inf; nothing was written."""


@torch.no_grad()
def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters whose local values (this rank's shard) are not all
    finite. Frozen ones are left out: training cannot change them (and a quantized base's
    tensors do not support the check)."""
    named = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        local = param.detach()
        local = local.to_local() if hasattr(local, "to_local") else local  # a DTensor's shard
        if local.is_floating_point() and local.numel():
            named.append((name, torch.isfinite(local).all()))
    if not named:
        return []
    device = named[0][1].device
    flags = torch.stack([flag.to(device) for _, flag in named])
    finite = flags.tolist()  # deliberate wait for the device: at saves only
    return [name for (name, _), ok in zip(named, finite, strict=True) if not ok]


def nonfinite_error(model: torch.nn.Module | None, name: str) -> NonFiniteWeightsError | None:
    """An error naming the non-finite parameters of `model`, or None if all are finite."""
    bad = nonfinite_parameters(model) if model is not None else []
    if not bad:
        return None
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return NonFiniteWeightsError(
        f"not saving checkpoint {name}: {len(bad)} parameters hold NaN or inf ({shown}); "
        "the checkpoints already saved are kept as they are"
    )
