"""Parameter freezing: turn off gradients for the parameters a `freeze:` section names."""

from __future__ import annotations

import fnmatch
import logging

import torch

from automodel.core.config import ConfigError, ConfigNode, Problem

from ._sections import Freeze

log = logging.getLogger("automodel.recipes")


# transformers' names for a VLM's projector between the image encoder and the language model
PROJECTOR_NAMES = ("multi_modal_projector", "connector", "mm_projector", "multimodal_projector")


def vlm_parts(model: torch.nn.Module) -> dict[str, torch.nn.Module | None]:
    """A VLM's vision tower, projector and language model as transformers finds them
    (`get_encoder("image")`, the projector by name, `get_decoder()`); None where absent."""
    find = getattr(model, "get_encoder", None)
    tower = find(modality="image") if find is not None else None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    holders = [model, getattr(model, "model", None)]
    projector = next(
        (getattr(h, n) for h in holders if h is not None for n in PROJECTOR_NAMES if hasattr(h, n)),
        None,
    )
    outer = (model, getattr(model, "model", None))
    return {
        "vision_tower": None if tower is None or tower in outer else tower,
        "multimodal_projector": projector,
        "language_model": None if decoder is None or decoder in outer else decoder,
    }


def apply_freeze(model: torch.nn.Module, section: Freeze, cfg: ConfigNode) -> int:
    """Set `requires_grad=False` on matching parameters; return how many tensors were frozen."""
    parts = {
        k: getattr(section, k) for k in ("vision_tower", "multimodal_projector", "language_model")
    }
    if not section.patterns and not section.embeddings and not any(parts.values()):
        return 0
    named = dict(model.named_parameters())
    matched = {
        pattern: [n for n in named if fnmatch.fnmatchcase(n, pattern)]
        for pattern in section.patterns
    }
    problems = [
        Problem(
            "freeze.patterns",
            f"{pattern!r} matches no parameter; names look like {', '.join(list(named)[:3])}",
            cfg.where("freeze.patterns"),
        )
        for pattern, names in matched.items()
        if not names
    ]
    if problems:
        raise ConfigError(problems)
    frozen = {id(named[n]) for names in matched.values() for n in names}
    if section.embeddings:
        frozen.update(id(p) for p in model.get_input_embeddings().parameters())
    found = vlm_parts(model) if any(parts.values()) else {}
    for key in (k for k, wanted in parts.items() if wanted):
        if found[key] is None:
            raise ConfigError(
                Problem(
                    f"freeze.{key}",
                    f"{type(model).__name__} has no {key.replace('_', ' ')} to freeze",
                    cfg.where(f"freeze.{key}"),
                )
            )
        frozen.update(id(p) for p in found[key].parameters())
    params = list(model.parameters())
    for param in params:
        if id(param) in frozen:
            param.requires_grad_(False)
    if all(not p.requires_grad for p in params):
        raise ConfigError(Problem("freeze", "every parameter is frozen; nothing would train"))
    count = sum(p.numel() for p in params if not p.requires_grad)
    log.info("froze %d tensors (%.2fM parameters)", len(frozen), count / 1e6)
    return len(frozen)
