"""Which ``nn.Linear`` modules a LoraConfig selects, with errors that show what exists."""

from __future__ import annotations

import fnmatch
import re

from torch import nn

from ._config import LoraConfig, LoraConfigError

_HEAD_NAMES = ("lm_head", "output", "score", "classifier")


def pattern_matches(pattern: str, path: str) -> bool:
    """Whether one target/exclude pattern selects the module at ``path``."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], path) is not None
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, "*." + pattern)


def output_head_paths(model: nn.Module) -> set[str]:
    """Paths of the model's output projection(s), never adapted by ``match_all_linear``."""
    heads = set()
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    for path, module in model.named_modules():
        if module is head or (head is None and path.rsplit(".", 1)[-1] in _HEAD_NAMES):
            heads.add(path)
    return heads


def select_linear_modules(model: nn.Module, config: LoraConfig) -> list[str]:
    """Paths of the linear modules to wrap, in ``named_modules`` order; errors on a dead pattern."""
    from ._lora_linear import LoraLinear

    modules = dict(model.named_modules())
    linear = [p for p, m in modules.items() if isinstance(m, nn.Linear | LoraLinear) and p]
    already = [p for p in linear if isinstance(modules[p], LoraLinear)]
    if already:
        raise LoraConfigError(
            f"the model already has LoRA on {len(already)} module(s) ({few_names(already)}); "
            "apply_lora adds one adapter per module: load or merge the existing one instead"
        )
    for pattern in config.target_modules + config.exclude_modules:
        _check_pattern(pattern)
    for pattern in config.target_modules:
        if not any(pattern_matches(pattern, p) for p in linear):
            others = [p for p in modules if p and pattern_matches(pattern, p)]
            hint = (
                f"; it matches only non-linear modules ({few_names(others)}), and LoRA wraps nn.Linear"
                if others
                else ""
            )
            raise LoraConfigError(
                f"target_modules pattern {pattern!r} matches no nn.Linear module{hint}. "
                f"Linear modules in this model include: {few_names(_examples(linear))}"
            )
    for pattern in config.exclude_modules:
        if not any(pattern_matches(pattern, p) for p in linear):
            raise LoraConfigError(
                f"exclude_modules pattern {pattern!r} matches no nn.Linear module. "
                f"Linear modules in this model include: {few_names(_examples(linear))}"
            )
    heads = output_head_paths(model)
    selected = []
    for path in linear:
        named = any(pattern_matches(p, path) for p in config.target_modules)
        if not (named or (config.match_all_linear and path not in heads)):
            continue
        if any(pattern_matches(p, path) for p in config.exclude_modules):
            continue
        selected.append(path)
    if not selected:
        raise LoraConfigError(
            "LoraConfig selects no module after exclude_modules and the output-head rule; "
            f"linear modules in this model include: {few_names(_examples(linear))}"
        )
    return selected


def _check_pattern(pattern: str) -> None:
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as exc:
            raise LoraConfigError(f"pattern {pattern!r} is not a valid regex: {exc}") from exc


def _examples(paths: list[str], n: int = 6) -> list[str]:
    """A few paths with distinct last components, so the example shows the kinds that exist."""
    seen: dict[str, str] = {}
    for path in paths:
        seen.setdefault(path.rsplit(".", 1)[-1], path)
    picked = list(seen.values())
    return picked[:n] if picked else paths[:n]


def few_names(names: list[str], n: int = 6) -> str:
    """The first ``n`` names for an error message, with how many there are when cut short."""
    shown = ", ".join(names[:n])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > n else (shown or "(none)")
