"""Adapters on disk in the Hugging Face PEFT format: adapter_config.json + adapter_model.safetensors."""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ._apply import add_lora, lora_modules, lora_parameters, lora_state_dict
from ._atomic import write_atomic
from ._config import LoraConfig, LoraConfigError, key_matches
from ._matching import few_names

# The Hugging Face PEFT adapter format: one statement of its names, for every writer and reader.
CONFIG_NAME = ADAPTER_CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
KEY_PREFIX = ADAPTER_KEY_PREFIX = "base_model.model."  # before each parameter name in the file

# adapter_config.json options this package cannot honour; each must be unset (null, false, {}, []).
# (fan_in_fan_out is honoured: as in peft, each module's type decides its weight layout, so a
# Conv1D is transposed and an nn.Linear is not, whatever the flag says.)
_UNSUPPORTED_OPTIONS = (
    "modules_to_save",
    "layers_to_transform",
    "layers_pattern",
    "lora_bias",
    "use_qalora",
    "trainable_token_indices",
    "layer_replication",
    "megatron_config",
    "alora_invocation_tokens",
    "use_bdlora",
    "kasa_config",
    "arrow_config",
    "monteclora_config",
)


V = TypeVar("V")


class AdapterError(ValueError):
    """An adapter folder that cannot be saved from or loaded into this model."""


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or (
            model.module if isinstance(model, nn.parallel.DistributedDataParallel) else None
        )
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def adapter_config(
    model: nn.Module, base_model_name_or_path: str | None = None, task_type: str | None = None
) -> dict[str, Any]:
    """The adapter_config.json content describing the LoRA on ``model``.

    ``r`` and ``lora_alpha`` are the values most targets have; a target with another rank or
    alpha is named in ``rank_pattern``/``alpha_pattern`` by the shortest end of its path that
    names no target with a different value (peft's rule, e.g. ``experts.down_proj``).
    With adapted stacked weights (``target_parameters``) ``lora_dropout`` is written as 0: peft
    refuses dropout on those adapters, and dropout only matters in training.
    """
    modules = list(lora_modules(unwrap(model)))
    stacked = list(lora_parameters(unwrap(model)))
    adapted = [*modules, *stacked]
    if not adapted:
        raise AdapterError("the model has no LoRA modules: call apply_lora(model, config) first")
    first_path, first = adapted[0]
    for path, module in adapted[1:]:
        for attr in ("use_rslora", "use_dora"):
            if getattr(module, attr) != getattr(first, attr):
                raise AdapterError(
                    f"LoRA {attr} differs between {first_path} and {path}; the adapter format "
                    "written here needs one setting for all modules"
                )
    dropouts = [m.lora_dropout.p for _, m in modules if isinstance(m.lora_dropout, nn.Dropout)]
    dropout = dropouts[0] if dropouts and not stacked else 0.0
    init = first.init_a
    rank, rank_pattern = _patterns({path: module.rank for path, module in adapted})
    alpha, alpha_pattern = _patterns({path: module.alpha for path, module in adapted})
    return {
        "peft_type": "LORA",
        "task_type": task_type if task_type is not None else _infer_task_type(unwrap(model)),
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": [path for path, _ in modules],
        "target_parameters": [path for path, _ in stacked] or None,
        "exclude_modules": None,
        "use_rslora": first.use_rslora,
        "use_dora": first.use_dora,
        "bias": "none",
        # peft's flag for (in, out) weights; peft sets it when it meets a Conv1D (GPT-2).
        "fan_in_fan_out": any(module.fan_in_fan_out for _, module in modules),
        "init_lora_weights": True if init == "kaiming" else "gaussian",
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "inference_mode": True,
        "revision": None,
    }


def save_adapter(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
) -> Path:
    """Write the adapter as ``adapter_config.json`` + ``adapter_model.safetensors``; return the folder."""
    out = Path(directory)
    config = adapter_config(model, base_model_name_or_path, task_type)
    tensors = {
        KEY_PREFIX + name: tensor.detach().to("cpu").contiguous()
        for name, tensor in lora_state_dict(unwrap(model)).items()
    }
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    write_adapter_config(out, config)
    return out


def write_adapter_config(directory: str | os.PathLike[str], config: dict[str, Any]) -> Path:
    """Write `config` (see `adapter_config`) as the folder's ``adapter_config.json``, atomically.

    The one writer of that file: `save_adapter` and a checkpoint's adapter folder both use it.
    """
    path = Path(directory) / CONFIG_NAME
    return write_atomic(path, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))


def read_adapter_config(directory: str | os.PathLike[str]) -> LoraConfig:
    """The LoraConfig an adapter folder describes; AdapterError naming any unsupported option."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise AdapterError(f"{path} not found: an adapter folder needs {CONFIG_NAME}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise AdapterError(f"{path} must hold a JSON object")
    peft_type = raw.get("peft_type")
    if peft_type != "LORA":
        raise AdapterError(
            f"{path}: peft_type {peft_type!r} is not supported; automodel.peft loads LoRA "
            "adapters (peft_type 'LORA', including DoRA and rsLoRA)"
        )
    for key in _UNSUPPORTED_OPTIONS:
        if raw.get(key):
            raise AdapterError(
                f"{path}: option {key}={raw[key]!r} is not supported by automodel.peft "
                "(it must be unset: null, false or empty)"
            )
    if raw.get("bias", "none") != "none":
        raise AdapterError(f"{path}: option bias={raw['bias']!r} is not supported (only 'none')")
    targets = raw.get("target_modules")
    parameters = raw.get("target_parameters") or []
    if not isinstance(parameters, list) or not all(isinstance(p, str) for p in parameters):
        raise AdapterError(f"{path}: target_parameters must be a list of names, got {parameters!r}")
    if parameters and _version(raw.get("peft_version")) < (0, 19):
        raise AdapterError(
            f"{path}: written by peft {raw['peft_version']}, which lays out the LoRA factors of "
            "target_parameters the other way round (peft 0.19 changed it); load it with that "
            "peft version and save it again with peft >= 0.19"
        )
    all_linear = isinstance(targets, str) and targets.lower() == "all-linear"  # peft's wildcard
    if all_linear:
        targets = []
    elif isinstance(targets, str):  # peft: a single string is a full-match regex
        targets = ["re:" + targets]
    init = raw.get("init_lora_weights", True)
    try:
        return LoraConfig(
            dim=raw.get("r", 8),
            alpha=raw.get("lora_alpha", 8),
            dropout=raw.get("lora_dropout", 0.0) or 0.0,
            target_modules=targets or [],
            match_all_linear=all_linear,
            target_parameters=parameters,
            exclude_modules=_exclude_list(raw.get("exclude_modules")),
            use_rslora=bool(raw.get("use_rslora", False)),
            use_dora=bool(raw.get("use_dora", False)),
            init_a="gaussian" if init == "gaussian" else "kaiming",
            rank_pattern=raw.get("rank_pattern") or {},
            alpha_pattern=raw.get("alpha_pattern") or {},
        )
    except LoraConfigError as exc:
        raise AdapterError(f"{path}: {exc}") from exc


def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Load an adapter folder (ours or peft's) into ``model``, applying LoRA first if needed."""
    folder = Path(directory)
    config = read_adapter_config(folder)
    target = unwrap(model)
    if not lora_state_dict(target):
        try:
            add_lora(target, config, unused_patterns_ok=True)
        except LoraConfigError as exc:
            raise AdapterError(f"adapter {folder} does not fit this model: {exc}") from exc
    saved = _read_adapter_tensors(folder / WEIGHTS_NAME)
    expected = lora_state_dict(target)
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {few_names(missing, 4)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {few_names(unexpected, 4)}")
        raise AdapterError(
            f"adapter {folder / WEIGHTS_NAME} does not match the LoRA modules of this model "
            f"({'; '.join(parts)})"
        )
    modules = dict(lora_modules(target))
    for name, tensor in saved.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            module_path = name.rsplit(".lora_", 1)[0]
            module = modules.get(module_path)
            what = (
                f"module {module_path} (in_features={module.in_features}, "
                f"out_features={module.out_features}, rank={module.rank})"
                if module is not None
                else f"the stacked weight adapted at {module_path}"
            )
            raise AdapterError(
                f"adapter {folder / WEIGHTS_NAME}: {name} has shape {list(tensor.shape)} but "
                f"{what} needs {list(expected[name].shape)}; the adapter was trained on a "
                "different base model or rank (or, for stacked expert weights, saved by peft "
                "< 0.19, whose factors are laid out the other way round)"
            )
    with torch.no_grad():
        for name, tensor in saved.items():
            expected[name].copy_(tensor.to(expected[name].dtype))
    return model


def _read_adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        bin_path = path.with_name("adapter_model.bin")
        hint = (
            f"; {bin_path.name} (pickle) is not loaded for safety: re-save it as safetensors"
            if bin_path.is_file()
            else ""
        )
        raise AdapterError(f"{path} not found{hint}")
    out = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                name = key.removeprefix(KEY_PREFIX)
                for adapter_suffix in (".default.weight", ".default"):  # older peft files
                    if ".lora_" in name and name.endswith(adapter_suffix):
                        name = name[: -len(adapter_suffix)] + (
                            ".weight" if adapter_suffix == ".default.weight" else ""
                        )
                out[name] = f.get_tensor(key)
    except (OSError, RuntimeError, ValueError) as exc:
        raise AdapterError(f"cannot read {path}: {exc}") from exc
    return out


def _patterns(values: dict[str, V]) -> tuple[V, dict[str, V]]:
    """The most common of the targets' ``values`` (the first of equals), and peft pattern keys
    naming the targets with another value, each as short as it can be."""
    default = Counter(values.values()).most_common(1)[0][0]
    pattern: dict[str, V] = {}
    for path, value in values.items():
        if value != default and not any(key_matches(key, path) for key in pattern):
            pattern[_shortest_key(path, values)] = value
    return default, pattern


def _shortest_key(path: str, values: dict[str, V]) -> str:
    """The shortest end of ``path`` (whole names) that, as a peft pattern key, names only
    targets with the value of ``path``."""
    parts = path.split(".")
    ends = [".".join(re.escape(p) for p in parts[i:]) for i in reversed(range(len(parts)))]
    for key in [*ends, re.escape(path)]:
        if all(v == values[path] for t, v in values.items() if key_matches(key, t)):
            return key
    raise AdapterError(
        f"the rank or alpha of {path} cannot be written in peft's rank_pattern/alpha_pattern: "
        "every key naming it also names an adapted module with another value"
    )


def _version(value: object) -> tuple[int, ...]:
    """``"0.18.1"`` as ``(0, 18, 1)``; unknown or absent: as new as can be."""
    try:
        return tuple(int(part) for part in str(value).split(".")[:2])
    except ValueError:
        return (sys.maxsize,)


def _exclude_list(value: object) -> list[str]:
    if value is None:
        return []
    return ["re:" + value] if isinstance(value, str) else list(value)  # type: ignore[arg-type]


def _infer_task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    for suffix, task in (
        ("ForCausalLM", "CAUSAL_LM"),
        ("ForSequenceClassification", "SEQ_CLS"),
        ("ForTokenClassification", "TOKEN_CLS"),
        ("ForQuestionAnswering", "QUESTION_ANS"),
    ):
        if name.endswith(suffix):
            return task
    return None
