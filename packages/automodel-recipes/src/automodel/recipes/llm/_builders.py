"""Plain builder functions the LLM recipes compose: each turns one config section into an object."""

from __future__ import annotations

import logging
from typing import Any

import torch

from automodel.core.config import ConfigError, ConfigNode, Problem, instantiate
from automodel.core.data import build_dataloader, pack_dataset
from automodel.core.losses import MaskedCrossEntropy
from automodel.core.optim import build_lr_scheduler
from automodel.core.training import StepScheduler

from ._sections import PackedSequence, read_section

log = logging.getLogger(__name__)


def build_model(cfg: ConfigNode) -> torch.nn.Module:
    """The model from the `model:` section (any `_target_` returning a HF causal LM)."""
    return instantiate(cfg.model)


def build_tokenizer(cfg: ConfigNode) -> Any:
    """The tokenizer from `tokenizer:`, else the one next to `model.pretrained_model_name_or_path`."""
    if "tokenizer" in cfg:
        return instantiate(cfg.tokenizer)
    from transformers import AutoTokenizer

    source = cfg.get("model.pretrained_model_name_or_path")
    if source is None:
        raise ConfigError(
            Problem("tokenizer", "add a tokenizer section; the model has no pretrained path")
        )
    return AutoTokenizer.from_pretrained(source)


def build_dataset(cfg: ConfigNode, name: str, tokenizer: Any) -> Any:
    """The dataset of section `name` (`dataset` or `validation_dataset`), packed if configured."""
    dataset = instantiate(cfg[name], tokenizer=tokenizer)
    size = read_section(cfg, "packed_sequence", PackedSequence).packed_sequence_size
    if size:
        dataset = pack_dataset(dataset, size, pad_token_id=tokenizer.pad_token_id)
    return dataset


def build_loader(
    cfg: ConfigNode,
    name: str,
    dataset: Any,
    batch_size: int,
    seed: int,
    pad_token_id: int,
    dp_rank: int = 0,
    dp_size: int = 1,
) -> Any:
    """A stateful dataloader from section `name` (`dataloader` or `validation_dataloader`).

    Without `_target_` the section's keys go to `automodel.core.data.build_dataloader`; with one,
    that callable is called instead with `dataset`, `batch_size`, `dp_rank` and `dp_size` added.
    Each data-parallel rank reads its own shard (`dp_rank` of `dp_size`).
    """
    if name in cfg and "_target_" in cfg[name]:
        return instantiate(
            cfg[name], dataset=dataset, batch_size=batch_size, dp_rank=dp_rank, dp_size=dp_size
        )
    options = cfg[name].to_dict() if name in cfg else {}
    if name == "validation_dataloader":
        options.setdefault("shuffle", False)
        options.setdefault("drop_last", False)
    options.setdefault("seed", seed)
    options.setdefault("pad_token_id", pad_token_id)
    return build_dataloader(dataset, batch_size, dp_rank=dp_rank, dp_size=dp_size, **options)


def build_loss(cfg: ConfigNode) -> Any:
    """The loss from `loss_fn:` (default MaskedCrossEntropy)."""
    return instantiate(cfg.loss_fn) if "loss_fn" in cfg else MaskedCrossEntropy()


def build_step_scheduler(cfg: ConfigNode, dp_size: int = 1) -> StepScheduler:
    """The step scheduler; checks the batch arithmetic (no model needed).

    global_batch_size = local_batch_size x grad_acc_steps x dp_size.
    """
    return StepScheduler(**cfg.step_scheduler.to_dict(), dp_size=dp_size)


def build_validation_loader(
    cfg: ConfigNode, tokenizer: Any, batch_size: int, seed: int, dp_rank: int, dp_size: int
) -> Any:
    """The `validation_dataset` loader (each dp rank its shard), or None without that section."""
    if "validation_dataset" not in cfg:
        return None
    dataset = build_dataset(cfg, "validation_dataset", tokenizer)
    if len(dataset) % dp_size:
        log.warning(
            "%d validation samples do not divide over %d ranks: a few count twice",
            len(dataset), dp_size,
        )  # fmt: skip
    pad = tokenizer.pad_token_id
    return build_loader(
        cfg, "validation_dataloader", dataset, batch_size, seed, pad, dp_rank, dp_size
    )


def build_scheduler(cfg: ConfigNode, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """The LR scheduler from `lr_scheduler:` over `total_steps` (default: constant LR)."""
    options = cfg.lr_scheduler.to_dict() if "lr_scheduler" in cfg else {"style": "constant"}
    try:
        return build_lr_scheduler(optimizer, total_steps=total_steps, **options)
    except ValueError as e:
        where = cfg.where("lr_scheduler")
        raise ConfigError(
            Problem("lr_scheduler", f"{e} (this run has {total_steps} steps)", where)
        ) from e
