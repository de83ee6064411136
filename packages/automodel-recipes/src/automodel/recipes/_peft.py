"""The recipes' side of PEFT: build LoRA from `peft:`, write adapter extras, export a merged model."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from automodel.checkpoint import CONFIG_FILE, MODEL_DIR, full_model_state, publish_folder
from automodel.core.config import ConfigNode, instantiate, save_config
from automodel.core.losses import FusedLinearCrossEntropy
from automodel.distributed import is_main_process
from automodel.peft import (
    LoraConfig,
    LoraLinear,
    adapter_config,
    apply_lora,
    merged_state_dict,
    write_adapter_config,
)

from ._errors import config_problem
from ._moe_nemo import RANK_SCALING, scaled_expert_ranks

log = logging.getLogger("automodel.recipes")


def build_lora_config(cfg: ConfigNode) -> LoraConfig | None:
    """The LoraConfig of the `peft:` section, or None without one (then nothing to merge)."""
    if "peft" not in cfg:
        if cfg.get("checkpoint.save_merged_model"):
            raise config_problem(
                cfg,
                "checkpoint.save_merged_model",
                "merging needs adapters: add a peft: section or drop this option",
            )
        return None
    config = instantiate(cfg.peft)
    if not isinstance(config, LoraConfig):
        message = f"_target_ built a {type(config).__name__}; use automodel.peft.LoraConfig"
        raise config_problem(cfg, "peft", message)
    return config


def apply_peft(
    model: torch.nn.Module,
    config: LoraConfig,
    cfg: ConfigNode,
    loss_fn: Any,
    device: torch.device,
) -> None:
    """Put LoRA on `model` (base frozen) and check it fits the rest of the recipe."""
    if config.use_triton and device.type != "cuda":
        raise config_problem(
            cfg,
            "peft.use_triton",
            f"the fused Triton LoRA kernel needs a CUDA device and this run uses {device}; "
            "set use_triton: false",
        )
    if cfg.get(RANK_SCALING):
        config = scaled_expert_ranks(model, config, cfg)
    try:
        apply_lora(model, config)
    except ValueError as e:
        raise config_problem(cfg, "peft", str(e)) from e
    head = model.get_output_embeddings()
    if isinstance(head, LoraLinear) and isinstance(loss_fn, FusedLinearCrossEntropy):
        raise config_problem(
            cfg,
            "peft.target_modules",
            "LoRA on the output head cannot be combined with FusedLinearCrossEntropy, which "
            "reads the head's weight directly; leave the head out or use MaskedCrossEntropy",
        )


def base_model_source(cfg: ConfigNode) -> str | None:
    """What the adapter was trained on: the pretrained path or name, else the config path."""
    source = cfg.get("model.pretrained_model_name_or_path") or cfg.get("model.config")
    return str(source) if isinstance(source, str | os.PathLike) else None


def adapter_extras_writer(
    model: torch.nn.Module, cfg: ConfigNode, *processors: Any
) -> Callable[[Path], None]:
    """What an adapter checkpoint needs beside its weights: adapter_config.json, YAML, and each
    of `processors` (tokenizer, processor).

    No config.json: transformers would then take the folder for a full model. The adapter's
    config is read from `model` now, while it is whole (a pipeline stage holds some layers).
    """
    content = adapter_config(model, base_model_name_or_path=base_model_source(cfg))

    def write(path: Path) -> None:
        model_dir = path / MODEL_DIR
        model_dir.mkdir(parents=True, exist_ok=True)
        write_adapter_config(model_dir, content)  # peft's own writer of the file
        for processor in processors:
            processor.save_pretrained(model_dir)
        save_config(cfg, path / CONFIG_FILE)

    return write


def save_merged_model(
    model: torch.nn.Module, out_dir: Path, *processors: Any, sharded: bool = False
) -> Path:
    """Write the base model with the adapters merged in as a plain HF model folder, atomically,
    with each of `processors` (tokenizer, processor) beside it.

    Every rank calls it; with ``sharded`` the full state is gathered (a collective) and rank 0
    writes.
    """
    state = None
    if sharded:
        # a collective: the whole state on rank 0, a tied LM head once (as one process saves)
        state = full_model_state(model)
        if not is_main_process():
            return out_dir
    staging = out_dir.with_name(f".staging-{out_dir.name}")
    shutil.rmtree(staging, ignore_errors=True)  # a killed earlier attempt's, never published
    model.save_pretrained(staging, state_dict=merged_state_dict(model, state=state))
    for processor in processors:
        processor.save_pretrained(staging)
    publish_folder(staging, out_dir)  # fsynced; the earlier merged model goes only after
    log.info("wrote the merged model to %s", out_dir)
    return out_dir
