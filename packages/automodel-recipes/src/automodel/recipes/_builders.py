"""Plain builder functions recipes compose: each turns one standard config section into an object."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import IterableDataset

from automodel.core.config import ConfigError, ConfigNode, Problem, instantiate
from automodel.core.data import build_dataloader
from automodel.core.optim import build_lr_scheduler
from automodel.core.training import StepScheduler

from ._errors import config_problem

log = logging.getLogger("automodel.recipes")


def build_model(cfg: ConfigNode, section: str = "model") -> torch.nn.Module:
    """The model of section `section` (any `_target_` returning a torch module)."""
    return instantiate(cfg[section])


def build_preprocessor(cfg: ConfigNode, section: str, load: Callable[[str], Any]) -> Any:
    """The tokenizer or processor of `section`, else `load` of the model's pretrained path."""
    if section in cfg:
        return instantiate(cfg[section])
    source = cfg.get("model.pretrained_model_name_or_path")
    if source is None:
        raise ConfigError(
            Problem(section, f"add a {section} section; the model has no pretrained path")
        )
    return load(source)


def model_config(cfg: ConfigNode, section: str) -> Any:
    """The HF config of a model section, read without weights; None when its `_target_` is
    neither from_pretrained- nor from_config-like."""
    from automodel.core.models import load_model_config  # on use: transformers' model code

    node = cfg[section]
    source = node.get("config", node.get("pretrained_model_name_or_path"))
    if isinstance(source, ConfigNode):
        source = None if "_target_" in source else source.to_dict()
    if source is None:
        return None
    overrides = {k: node[k] for k in ("vocab_size", "pad_token_id") if k in node}
    remote, revision = bool(node.get("trust_remote_code")), node.get("revision")
    return load_model_config(source, trust_remote_code=remote, revision=revision, **overrides)


def build_dataset_loaders(
    cfg: ConfigNode,
    make_dataset: Callable[[str], Any],
    batch_size: int,
    dp_rank: int,
    dp_size: int,
    **defaults: Any,
) -> tuple[Any, Any, Any]:
    """(train dataset, train loader, validation loader or None) of `dataset:` and
    `validation_dataset:`, each made by `make_dataset(section)`; each data-parallel rank reads
    its shard. `defaults` go to both loaders (a seed, a pad id, a collate function)."""
    shard = {"dp_rank": dp_rank, "dp_size": dp_size}
    train_set = make_dataset("dataset")
    train_loader = build_loader(cfg, "dataloader", train_set, batch_size, **shard, **defaults)
    if "validation_dataset" not in cfg:
        return train_set, train_loader, None
    val_set = make_dataset("validation_dataset")
    if hasattr(val_set, "__len__") and len(val_set) % dp_size:  # (a stream has no length)
        log.warning(
            "%d validation samples do not divide over %d ranks: a few count twice",
            len(val_set), dp_size,
        )  # fmt: skip
    val_loader = build_loader(
        cfg, "validation_dataloader", val_set, batch_size, **shard, validation=True, **defaults
    )
    return train_set, train_loader, val_loader


def build_loader(
    cfg: ConfigNode,
    name: str,
    dataset: Any,
    batch_size: int,
    dp_rank: int = 0,
    dp_size: int = 1,
    validation: bool = False,
    **defaults: Any,
) -> Any:
    """A stateful dataloader from section `name` (e.g. `dataloader`, `validation_dataloader`).

    Without `_target_` the section's keys, over `defaults` (a seed, a pad id, a collate
    function), go to `automodel.core.data.build_dataloader`; with one, that callable is called
    instead with `dataset`, `batch_size`, `dp_rank` and `dp_size` added. Each data-parallel rank
    reads its own shard (`dp_rank` of `dp_size`). A `validation` loader neither shuffles nor
    drops a last short batch unless its section says so.
    """
    if name in cfg and "_target_" in cfg[name]:
        return instantiate(
            cfg[name], dataset=dataset, batch_size=batch_size, dp_rank=dp_rank, dp_size=dp_size
        )
    if validation:
        defaults = {"shuffle": False, "drop_last": False, **defaults}
        if isinstance(dataset, IterableDataset):
            # every rank reads the whole validation stream: ranks' shards of a stream can differ
            # in length, and every rank must run the same batches (the sums count each row
            # dp_size times, which leaves the mean loss as it is)
            dp_rank, dp_size = 0, 1
    defaults = {"pin_memory": torch.cuda.is_available(), **defaults}  # copies need not wait
    options = {**defaults, **(cfg[name].to_dict() if name in cfg else {})}
    return build_dataloader(dataset, batch_size, dp_rank=dp_rank, dp_size=dp_size, **options)


def build_step_scheduler(cfg: ConfigNode, dp_size: int = 1) -> StepScheduler:
    """The step scheduler; checks the batch arithmetic (no model needed).

    global_batch_size = local_batch_size x grad_acc_steps x dp_size.
    """
    return StepScheduler(**cfg.step_scheduler.to_dict(), dp_size=dp_size)


def build_scheduler(cfg: ConfigNode, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """The LR scheduler from `lr_scheduler:` over `total_steps` (default: constant LR)."""
    options = cfg.lr_scheduler.to_dict() if "lr_scheduler" in cfg else {"style": "constant"}
    warmup = options.get("warmup_steps")
    if isinstance(warmup, int) and warmup > total_steps >= 1:  # a smoke run of a long config
        log.warning(
            "lr_scheduler.warmup_steps (%d) exceeds this run's %d steps: warming up over all %d",
            warmup, total_steps, total_steps,
        )  # fmt: skip
        options["warmup_steps"] = total_steps
    try:
        return build_lr_scheduler(optimizer, total_steps=total_steps, **options)
    except ValueError as e:
        message = f"{e} (this run has {total_steps} steps)"
        raise config_problem(cfg, "lr_scheduler", message) from e
