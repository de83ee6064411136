"""Parameter freezing: turn off gradients for the parameters a `freeze:` section names."""

from __future__ import annotations

import fnmatch
import logging

import torch

from automodel.core.config import ConfigError, ConfigNode, Problem

from ._sections import Freeze

log = logging.getLogger("automodel.recipes")


def apply_freeze(model: torch.nn.Module, section: Freeze, cfg: ConfigNode) -> int:
    """Set `requires_grad=False` on matching parameters; return how many tensors were frozen."""
    if not section.patterns and not section.embeddings:
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
    params = list(model.parameters())
    for param in params:
        if id(param) in frozen:
            param.requires_grad_(False)
    if all(not p.requires_grad for p in params):
        raise ConfigError(Problem("freeze", "every parameter is frozen; nothing would train"))
    count = sum(p.numel() for p in params if not p.requires_grad)
    log.info("froze %d tensors (%.2fM parameters)", len(frozen), count / 1e6)
    return len(frozen)
