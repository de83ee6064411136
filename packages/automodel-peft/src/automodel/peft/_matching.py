"""Which linear modules a LoraConfig selects, with errors that show what exists.

A linear module is an ``nn.Linear`` or a transformers ``Conv1D`` (GPT-2 and its relatives:
the same map with the weight stored transposed, ``(in, out)``). LoRA replaces the module's
forward by its own ``x W^T + b + update``, so only modules whose forward *is* that plain
map are wrapped: a subclass that overrides ``forward`` (an MoE router that returns
``(scores, logits)``, a quantized or grouped linear) is left alone, and so is a module whose
parent hands its weight straight to a fused kernel or a matmul (Mamba's ``out_proj`` in
``mamba_inner_fn``): that path never calls the module, so its LoRA update would be lost.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import logging
import re
import sys

from torch import nn

from ._config import LoraConfig, LoraConfigError

logger = logging.getLogger(__name__)

_HEAD_NAMES = ("lm_head", "output", "score", "classifier")

# nn.Linear subclasses whose overridden forward still computes exactly ``x W^T + b`` (only the
# rounding differs), named by (module, qualname) of the class that defines ``forward``.
_PLAIN_FORWARD_OVERRIDES = frozenset(
    {("transformers.models.falcon.modeling_falcon", "FalconLinear")}  # matmul, then + bias
)
_NOT_PLAIN = "its forward is not a plain linear map (x W^T + b), so LoRA cannot be added to it"
_BYPASSED = (
    "its parent module uses its weight directly (passed to a fused kernel or multiplied "
    "without calling the module), so a LoRA update on it would be skipped"
)


def conv1d_class() -> type[nn.Module] | None:
    """transformers' ``Conv1D``, if transformers has loaded it (never imports transformers).

    A model that holds a Conv1D has imported ``transformers.pytorch_utils``, so looking the
    class up in ``sys.modules`` finds it exactly when it can matter.
    """
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is a transformers ``Conv1D`` (weight ``(in, out)``, ``y = x W + b``)."""
    conv1d = conv1d_class()
    return conv1d is not None and isinstance(module, conv1d)


def is_linear_like(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Linear`` or a ``Conv1D`` (whatever its forward does)."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def has_plain_forward(module: nn.Module) -> bool:
    """Whether a linear-like module's class computes the plain map: its ``forward`` is
    ``nn.Linear.forward`` or ``Conv1D.forward`` (or a known exact re-implementation)."""
    owner = next(c for c in type(module).__mro__ if "forward" in vars(c))
    if owner is nn.Linear or (owner.__module__, owner.__qualname__) in _PLAIN_FORWARD_OVERRIDES:
        return isinstance(module, nn.Linear)
    return owner is conv1d_class()


def weight_used_directly(modules: dict[str, nn.Module], path: str) -> bool:
    """Whether the parent of the module at ``path`` computes with ``self.<name>.weight`` itself
    (an argument to a call, an operand of ``@``, transposed) rather than calling the module;
    reads of its dtype, device or shape do not count. Read from the parent class's source."""
    parent_path, _, name = path.rpartition(".")
    parent = modules.get(parent_path)
    if parent is None or not name.isidentifier():
        return False
    use = rf"(?<!isinstance\()\bself\.{name}\.weight(?:\s*[,)@]|\.(?:t\(\)|T)\b)"
    return re.search(use, _class_source(type(parent))) is not None


@functools.cache
def _class_source(cls: type) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):  # built-in or generated classes have no source
        return ""


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
    """Paths of the linear modules to wrap, in ``named_modules`` order; errors on a dead pattern.

    Candidates are ``nn.Linear`` and transformers ``Conv1D`` modules whose forward is the
    plain linear map (see :func:`has_plain_forward`). A linear subclass that overrides
    ``forward`` (e.g. ``Llama4Router``, ``PhimoeTopKRouter``: they return routing tuples) is
    never wrapped: ``match_all_linear`` and a pattern that also selects plain linear modules
    skip it (logged at debug level), and likewise a module whose parent uses its weight
    directly (see :func:`weight_used_directly`); a ``target_modules`` pattern that selects only
    such modules is a LoraConfigError naming the module, its class and why.
    ``exclude_modules`` patterns may name them (excluding what is skipped anyway is harmless).
    """
    from ._lora_linear import LoraLinear

    modules = dict(model.named_modules())
    already = [
        p for p, m in modules.items() if isinstance(m, LoraLinear) or "_lora_stacked" in m.__dict__
    ]
    if already:
        raise LoraConfigError(
            f"the model already has LoRA on {len(already)} module(s) ({few_names(already)}); "
            "apply_lora adds one adapter per module: load or merge the existing one instead"
        )
    if not (config.target_modules or config.match_all_linear):
        return []  # stacked weights only (target_parameters)
    candidates = [p for p, m in modules.items() if p and is_linear_like(m)]
    opaque = {p: _NOT_PLAIN for p in candidates if not has_plain_forward(modules[p])}
    for path in candidates:
        if path not in opaque and weight_used_directly(modules, path):
            opaque[path] = _BYPASSED
    linear = [p for p in candidates if p not in opaque]
    for pattern in config.target_modules + config.exclude_modules:
        _check_pattern(pattern)
    for pattern in config.target_modules:
        if any(pattern_matches(pattern, p) for p in linear):
            continue
        refused = [p for p in candidates if p in opaque and pattern_matches(pattern, p)]
        if refused:
            cls = type(modules[refused[0]])
            raise LoraConfigError(
                f"target_modules pattern {pattern!r} selects {refused[0]} "
                f"({cls.__module__}.{cls.__qualname__}"
                + (f"; {len(refused)} such modules in all" if len(refused) > 1 else "")
                + f"): {opaque[refused[0]]}. Remove it from target_modules; linear modules in this "
                f"model include: {few_names(_examples(linear))}"
            )
        others = [p for p in modules if p and pattern_matches(pattern, p)]
        hint = (
            f"; it matches only non-linear modules ({few_names(others)}), and LoRA wraps nn.Linear and Conv1D"
            if others
            else ""
        )
        raise LoraConfigError(
            f"target_modules pattern {pattern!r} matches no nn.Linear module (nor Conv1D){hint}. "
            f"Linear modules in this model include: {few_names(_examples(linear))}"
        )
    for pattern in config.exclude_modules:
        if not any(pattern_matches(pattern, p) for p in candidates):
            raise LoraConfigError(
                f"exclude_modules pattern {pattern!r} matches no nn.Linear module (nor Conv1D). "
                f"Linear modules in this model include: {few_names(_examples(linear))}"
            )
    heads = output_head_paths(model)
    selected = []
    for path in candidates:
        named = any(pattern_matches(p, path) for p in config.target_modules)
        if not (named or (config.match_all_linear and path not in heads)):
            continue
        if any(pattern_matches(p, path) for p in config.exclude_modules):
            continue
        if path in opaque:
            cls = type(modules[path])
            logger.debug("LoRA skips %s (%s): %s", path, cls.__qualname__, opaque[path])
            continue
        selected.append(path)
    if not selected:
        raise LoraConfigError(
            "LoraConfig selects no module after exclude_modules and the output-head rule; "
            f"linear modules in this model include: {few_names(_examples(linear))}"
        )
    return selected


def select_stacked_parameters(model: nn.Module, config: LoraConfig) -> dict[str, list[str]]:
    """``{owner module path: [parameter names]}`` of the stacked 3-D weights ``[E, ., .]`` that
    ``target_parameters`` selects, in module order; a LoraConfigError for a dead pattern."""
    if not config.target_parameters:
        return {}
    stacked, other = [], []
    for path, module in model.named_modules():
        for name, param in module._parameters.items():
            if param is not None:
                (stacked if param.dim() == 3 else other).append((path, name, tuple(param.shape)))
    full = {(path, name): f"{path}.{name}" if path else name for path, name, _ in stacked}
    for pattern in config.target_parameters:
        _check_pattern(pattern)
        if any(pattern_matches(pattern, p) for p in full.values()):
            continue
        flat = [f"{p}.{n}" if p else n for p, n, _ in other]
        hits = [f"{f} {list(shape)}" for f, (_, _, shape) in zip(flat, other, strict=True)
                if pattern_matches(pattern, f)]  # fmt: skip
        hint = (
            f"; it matches only {few_names(hits)}, not stacked 3-D weights [E, ., .] (adapt "
            "linear layers with target_modules)"
            if hits
            else ""
        )
        raise LoraConfigError(
            f"target_parameters pattern {pattern!r} matches no stacked expert weight{hint}. "
            f"Stacked weights in this model include: {few_names(_examples(list(full.values())))}"
        )
    selected: dict[str, list[str]] = {}
    for (path, name), path_name in full.items():
        if any(pattern_matches(p, path_name) for p in config.target_parameters):
            if not path:
                raise LoraConfigError(
                    f"target_parameters selects {name!r}, a parameter of the top-level module; "
                    "only parameters of a submodule (such as mlp.experts) can be adapted"
                )
            selected.setdefault(path, []).append(name)
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
