"""Parameter freezing: turn off gradients for the parameters a `freeze:` section names."""

from __future__ import annotations

import fnmatch
import logging

import torch

from automodel.core.config import ConfigError, ConfigNode, Problem

from ._sections import Freeze

log = logging.getLogger("automodel.recipes.llm")


def apply_freeze(model: torch.nn.Module, section: Freeze, cfg: ConfigNode) -> int:
    """Set `requires_grad=False` on matching parameters; return how many tensors were frozen."""
    if not section.patterns and not section.embeddings:
        return 0
    names = [name for name, _ in model.named_parameters()]
    problems = [
        Problem(
            "freeze.patterns",
            f"{pattern!r} matches no parameter; names look like {', '.join(names[:3])}",
            cfg.where("freeze.patterns"),
        )
        for pattern in section.patterns
        if not fnmatch.filter(names, pattern)
    ]
    if problems:
        raise ConfigError(problems)
    frozen = {id(p) for n, p in model.named_parameters() if _matches(n, section.patterns)}
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


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
