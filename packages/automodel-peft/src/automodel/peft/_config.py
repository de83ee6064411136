"""LoraConfig: what to adapt and how, validated when it is built."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Literal

import torch

from ._dtype import DtypeNameError, parse_dtype

_INITS = ("kaiming", "gaussian")
_DROPOUT_POSITIONS = ("pre", "post")
_QUANTIZATIONS = ("nf4",)


class LoraConfigError(ValueError):
    """A LoraConfig value or combination of values that cannot work."""


@dataclass
class LoraConfig:
    r"""LoRA settings: rank, scaling, which linear modules and stacked weights to adapt, variants.

    Linear modules are ``nn.Linear`` and transformers ``Conv1D`` whose forward is the plain
    linear map; subclasses that override ``forward`` (MoE routers) are never adapted.

    ``target_modules`` entries are globs matched against module paths
    (``*.q_proj``, ``model.layers.0.mlp.*``); a bare name such as ``q_proj`` matches
    that last path component anywhere; a ``re:`` prefix makes the rest a regex that
    must match the whole path.

    ``target_parameters`` entries are the same kind of patterns, matched against the paths of
    stacked 3-D weights ``[E, ., .]`` (MoE experts: ``mlp.experts.gate_up_proj``,
    ``*.experts.down_proj``), which get one rank-``dim`` update per expert, as peft's
    ``target_parameters`` does (no dropout and no DoRA on those; ``exclude_modules`` applies
    to ``target_modules`` and ``match_all_linear`` only).

    ``rank_pattern`` and ``alpha_pattern`` give some targets another rank or alpha than
    ``dim`` and ``alpha``, as peft's options of those names do (and they are saved under those
    names): each key is a regex matched against the end of a target's path, starting at a
    ``.`` (peft's rule: ``re.match(rf"(.*\.)?({key})$", path)``), so ``experts.down_proj``
    names that weight in every layer and ``layers\.0\.self_attn\.q_proj`` one module; the
    first key that matches gives the value. They apply to linear modules and stacked weights
    alike; the scaling of such a target is its alpha over its rank (rsLoRA: over its square
    root). A key that matches no adapted target is an error in :func:`apply_lora`.

    ``quantize_base="nf4"`` stores the frozen base weight of every adapted linear module in
    4-bit NF4 (QLoRA), but for those ``quantize_skip`` patterns name (as ``target_modules``
    entries; e.g. ``["lm_head"]``, which bitsandbytes also keeps in full precision), whose
    base weight keeps its dtype. A pattern that names no adapted module is an error.
    """

    dim: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    dropout_position: Literal["pre", "post"] = "pre"
    target_modules: list[str] = field(default_factory=list)
    exclude_modules: list[str] = field(default_factory=list)
    match_all_linear: bool = False
    target_parameters: list[str] = field(default_factory=list)
    use_rslora: bool = False
    use_dora: bool = False
    init_a: Literal["kaiming", "gaussian"] = "kaiming"
    lora_dtype: str | torch.dtype | None = None
    quantize_base: Literal["nf4"] | None = None
    nf4_block_size: int = 64
    quantize_skip: list[str] = field(default_factory=list)
    use_triton: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rank_pattern = _value_pattern(self.rank_pattern, "rank_pattern", _rank)
        self.alpha_pattern = _value_pattern(self.alpha_pattern, "alpha_pattern", _alpha)
        self.target_modules = _pattern_list(self.target_modules, "target_modules")
        self.exclude_modules = _pattern_list(self.exclude_modules, "exclude_modules")
        self.target_parameters = _pattern_list(self.target_parameters, "target_parameters")
        self.quantize_skip = _pattern_list(self.quantize_skip, "quantize_skip")
        if self.quantize_skip and self.quantize_base is None:
            raise LoraConfigError(
                "quantize_skip names adapted modules to keep unquantized, and quantize_base is "
                "not set: set quantize_base='nf4' or drop quantize_skip"
            )
        _rank(self.dim, "dim (the LoRA rank)")
        _alpha(self.alpha, "alpha")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise LoraConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        _choice(self.dropout_position, _DROPOUT_POSITIONS, "dropout_position")
        _choice(self.init_a, _INITS, "init_a")
        if self.quantize_base is not None:
            _choice(self.quantize_base, _QUANTIZATIONS, "quantize_base")
        if not isinstance(self.nf4_block_size, int) or self.nf4_block_size < 2:
            raise LoraConfigError(
                f"nf4_block_size must be an integer >= 2, got {self.nf4_block_size!r}"
            )
        self.lora_dtype = _dtype(self.lora_dtype)
        if not (self.target_modules or self.match_all_linear or self.target_parameters):
            raise LoraConfigError(
                "LoraConfig selects no modules: set target_modules (e.g. ['*.q_proj', '*.v_proj']) "
                "or match_all_linear: true for linear layers, or target_parameters for stacked "
                "MoE expert weights (e.g. ['*.experts.gate_up_proj', '*.experts.down_proj'])"
            )
        if self.use_dora and self.target_parameters:
            raise LoraConfigError(
                "use_dora cannot be combined with target_parameters: DoRA on stacked expert "
                "weights is not supported (peft does not support it either); turn one of them off"
            )
        if self.use_triton and self.use_dora:
            raise LoraConfigError(
                "use_triton and use_dora cannot be combined: the fused Triton kernel computes "
                "plain LoRA only; turn one of them off"
            )
        if self.use_dora and self.dropout_position == "post" and self.dropout > 0:
            raise LoraConfigError(
                "use_dora supports dropout_position 'pre' only (dropout on the LoRA input, as "
                "peft does); set dropout_position: pre or dropout: 0"
            )
        if self.use_triton and self.dropout_position == "post" and self.dropout > 0:
            raise LoraConfigError(
                "use_triton supports dropout_position 'pre' only (dropout on the LoRA input)"
            )

    @property
    def scaling(self) -> float:
        """The factor on B @ A: alpha/dim, or alpha/sqrt(dim) with rsLoRA."""
        return self.alpha / (math.sqrt(self.dim) if self.use_rslora else self.dim)

    def for_target(self, path: str) -> LoraConfig:
        """The settings of the target at ``path``: ``dim`` and ``alpha`` from ``rank_pattern``
        and ``alpha_pattern`` where a key matches it (peft's rule), no patterns left."""
        if not (self.rank_pattern or self.alpha_pattern):
            return self
        rank_key = pattern_key(self.rank_pattern, path)
        alpha_key = pattern_key(self.alpha_pattern, path)
        return replace(
            self,
            dim=self.dim if rank_key is None else self.rank_pattern[rank_key],
            alpha=self.alpha if alpha_key is None else self.alpha_pattern[alpha_key],
            rank_pattern={},
            alpha_pattern={},
        )

    def to_dict(self) -> dict[str, object]:
        """Plain values (dtype as its name), for logs and reports."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(out["lora_dtype"], torch.dtype):
            out["lora_dtype"] = str(out["lora_dtype"]).removeprefix("torch.")
        return out


def pattern_key(pattern: dict[str, object], path: str) -> str | None:
    """The first key of a rank/alpha pattern that matches the target ``path`` (peft's rule: a
    regex matching the end of the path, from its start or after a ``.``), or None."""
    return next((key for key in pattern if key_matches(key, path)), None)


def key_matches(key: str, path: str) -> bool:
    """Whether the rank/alpha pattern ``key`` names the target ``path`` (peft's rule)."""
    return re.match(rf"(.*\.)?({key})$", path) is not None


def _rank(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LoraConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def _alpha(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LoraConfigError(f"{key} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise LoraConfigError(
            f"{key} must be positive (the update is scaled by alpha/rank), got {value!r}"
        )
    return value


def _value_pattern(value: object, name: str, check: Callable[[object, str], object]) -> dict:
    """A rank/alpha pattern: regex keys (compiled to check them), each value checked."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LoraConfigError(
            f"{name} must be a mapping from a path regex to a value (peft's format, e.g. "
            f"{{'experts.down_proj': 4}}), got {value!r}"
        )
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise LoraConfigError(f"{name} keys must be non-empty strings, got {key!r}")
        try:
            re.compile(key)
        except re.error as exc:
            raise LoraConfigError(f"{name} key {key!r} is not a valid regex: {exc}") from None
        check(item, f"{name}[{key!r}]")
    return dict(value)


def _choice(value: object, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise LoraConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _pattern_list(value: object, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise LoraConfigError(f"{key} must be a list of non-empty strings, got {value!r}")
    return list(value)


def _dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    if value is None:
        return None
    try:
        return parse_dtype(value, "lora_dtype")
    except DtypeNameError as exc:
        raise LoraConfigError(str(exc)) from None
