"""NEFTune: uniform noise on the input embeddings while training (`neftune:`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from automodel.core.config import ConfigNode

from ._errors import config_problem
from ._sections import Neftune, read_section


def read_neftune(cfg: ConfigNode) -> float | None:
    """The checked `neftune.noise_alpha`, or None without a `neftune:` section."""
    if "neftune" not in cfg:
        return None
    alpha = read_section(cfg, "neftune", Neftune).noise_alpha
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha < 0:
        raise config_problem(cfg, "neftune.noise_alpha", f"expected a number >= 0, got {alpha!r}")
    return float(alpha)


def apply_neftune(model: nn.Module, cfg: ConfigNode, cp_size: int = 1) -> None:
    """With a `neftune:` section, hook noise onto the model's input embeddings (train mode only).

    The noise is `uniform(-a, a)` with `a = noise_alpha / sqrt(L × d)`, L the length of the
    whole sequence (`cp_size` times the chunk a context-parallel rank embeds), d the hidden
    size, drawn from the device's generator (so a resumed run draws what it would have).
    """
    alpha = read_neftune(cfg)
    if alpha is None:
        return
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embeddings = None
    if not isinstance(embeddings, nn.Module):
        raise config_problem(
            cfg, "neftune", f"{type(model).__name__} has no input embeddings to add noise to"
        )
    if alpha > 0:
        embeddings.register_forward_hook(_noise_hook(alpha, cp_size))


def _noise_hook(alpha: float, cp_size: int) -> Any:
    def add_noise(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        bound = alpha / math.sqrt(output.shape[-2] * cp_size * output.shape[-1])  # host ints
        return output + torch.empty_like(output).uniform_(-bound, bound)

    return add_noise
