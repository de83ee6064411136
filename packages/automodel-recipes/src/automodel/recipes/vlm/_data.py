"""The VLM recipe's data: the processor, image-text conversation datasets and their loaders."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from automodel.core.config import ConfigNode, Section, instantiate
from automodel.core.data import VisionChatCollator

from .._builders import build_dataset_loaders, build_preprocessor
from .._sections import read_section


@dataclass(frozen=True)
class Collate:
    """`collate:` how conversations become batches: the Jinja chat template (default the
    processor's) and text the model writes at the start of every answer, put there with no
    loss on it (Gemma 4's empty thinking channel, for one)."""

    chat_template: str | None = None
    assistant_prefix: str | None = None


# What the VLM recipe reads beside the standard sections: the processor, the data, the loss.
VLM_SECTIONS = {
    "processor": Section(needs_target=True),
    "dataset": Section(required=True, needs_target=True),
    "validation_dataset": Section(needs_target=True),
    "loss_fn": Section(needs_target=True),
    "collate": Section(keys_of=Collate),
}


def build_processor(cfg: ConfigNode) -> Any:
    """The processor from `processor:`, else the one next to `model.pretrained_model_name_or_path`."""
    from automodel.core.models import load_processor

    return build_preprocessor(cfg, "processor", load_processor)


def build_vlm_loaders(
    cfg: ConfigNode, processor: Any, batch_size: int, seed: int, dp_rank: int, dp_size: int
) -> tuple[Any, Any, Any]:
    """(train dataset, train loader, validation loader or None); batches are made by the
    processor (`VisionChatCollator`), images decoded by the loader's workers."""
    collate = VisionChatCollator(processor, **asdict(read_section(cfg, "collate", Collate)))
    return build_dataset_loaders(
        cfg, lambda name: instantiate(cfg[name]), batch_size, dp_rank, dp_size,
        seed=seed, collate_fn=collate,
    )  # fmt: skip
