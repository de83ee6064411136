"""The VLM recipe's data: the processor, image-text conversation datasets and their loaders."""

from __future__ import annotations

import logging
from typing import Any

from automodel.core.config import ConfigError, ConfigNode, Problem, Section, instantiate
from automodel.core.data import VisionChatCollator

from .._builders import build_loader

log = logging.getLogger("automodel.recipes")

# What the VLM recipe reads beside the standard sections: the processor, the data, the loss.
VLM_SECTIONS = {
    "processor": Section(needs_target=True),
    "dataset": Section(required=True, needs_target=True),
    "validation_dataset": Section(needs_target=True),
    "loss_fn": Section(needs_target=True),
}


def build_processor(cfg: ConfigNode) -> Any:
    """The processor from `processor:`, else the one next to `model.pretrained_model_name_or_path`."""
    if "processor" in cfg:
        return instantiate(cfg.processor)
    from automodel.core.models import load_processor

    source = cfg.get("model.pretrained_model_name_or_path")
    if source is None:
        raise ConfigError(
            Problem("processor", "add a processor section; the model has no pretrained path")
        )
    return load_processor(source)


def build_vlm_loaders(
    cfg: ConfigNode, processor: Any, batch_size: int, seed: int, dp_rank: int, dp_size: int
) -> tuple[Any, Any, Any]:
    """(train dataset, train loader, validation loader or None); batches are made by the
    processor (`VisionChatCollator`), images decoded by the loader's workers."""
    shard = {"dp_rank": dp_rank, "dp_size": dp_size}
    collate = {"seed": seed, "collate_fn": VisionChatCollator(processor)}
    train_set = instantiate(cfg.dataset)
    train_loader = build_loader(cfg, "dataloader", train_set, batch_size, **shard, **collate)
    if "validation_dataset" not in cfg:
        return train_set, train_loader, None
    val_set = instantiate(cfg.validation_dataset)
    if len(val_set) % dp_size:
        log.warning(
            "%d validation samples do not divide over %d ranks: a few count twice",
            len(val_set), dp_size,
        )  # fmt: skip
    val_loader = build_loader(
        cfg, "validation_dataloader", val_set, batch_size, **shard, validation=True, **collate
    )
    return train_set, train_loader, val_loader
