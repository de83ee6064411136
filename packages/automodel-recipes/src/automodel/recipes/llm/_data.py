"""The LLM recipes' data: tokenizer, tokenized (optionally packed) datasets and their loaders."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

from automodel.core.config import ConfigError, ConfigNode, Section, instantiate, resolve_target
from automodel.core.data import pack_dataset
from automodel.core.losses import MaskedCrossEntropy

from .._builders import build_dataset_loaders, build_preprocessor
from .._errors import config_problem
from .._sections import PackedSequence, document_rows, read_section

log = logging.getLogger("automodel.recipes.llm")

# What the LLM recipes read beside the standard sections: text data and the loss over it.
LM_SECTIONS = {
    "tokenizer": Section(needs_target=True),
    "dataset": Section(required=True, needs_target=True, provided=("tokenizer",)),
    "validation_dataset": Section(needs_target=True, provided=("tokenizer",)),
    "packed_sequence": Section(keys_of=PackedSequence),
    "loss_fn": Section(needs_target=True),
}


def check_rows(cfg: ConfigNode) -> None:
    """Packing and padding-free batches are two ways of one thing: rows of several documents."""
    packed = read_section(cfg, "packed_sequence", PackedSequence).packed_sequence_size
    for name in ("dataloader", "validation_dataloader") if packed else ():
        if cfg.get(f"{name}.padding_free"):
            message = (
                "packed rows hold no padding to leave out; use packed_sequence or "
                "padding_free, not both"
            )
            raise config_problem(cfg, f"{name}.padding_free", message)


def check_documents(cfg: ConfigNode, model: Any, local_batch_size: int, cp_size: int) -> None:
    """Refuse rows of several documents (`document_rows`) where `model` would let them mix."""
    from automodel.core.models import document_masking_problem

    key = document_rows(cfg)
    if key is None:
        return
    # packed: local_batch_size rows per forward; padding-free: one; cp: its own attention
    packed = key.startswith("packed_sequence") and cp_size == 1
    problem = document_masking_problem(model, rows=local_batch_size if packed else 1)
    if problem is not None:
        message = f"rows of several documents need a model that keeps them apart: {problem}"
        raise config_problem(cfg, key, message)


def build_tokenizer(cfg: ConfigNode, optional: bool = False) -> Any:
    """The tokenizer from `tokenizer:`, else the one next to `model.pretrained_model_name_or_path`.

    `optional`: None when there is neither and the dataset reads token ids (its `tokenizer`
    argument is optional, e.g. `indexed_dataset`, `nanogpt_dataset`): nothing to tokenize,
    and checkpoints then hold no tokenizer.
    """
    from automodel.core.models import load_tokenizer

    given = "tokenizer" in cfg or cfg.get("model.pretrained_model_name_or_path") is not None
    if optional and not given and _reads_token_ids(cfg):
        log.info("no tokenizer: the dataset reads token ids (checkpoints hold no tokenizer)")
        return None
    return build_preprocessor(cfg, "tokenizer", load_tokenizer)


def _reads_token_ids(cfg: ConfigNode) -> bool:
    """Whether every dataset of `cfg` takes its tokenizer as an optional argument."""
    for name in ("dataset", "validation_dataset"):
        if name not in cfg:
            continue
        try:
            parameter = inspect.signature(resolve_target(cfg[name]._target_)).parameters.get(
                "tokenizer"
            )
        except (ConfigError, TypeError, ValueError, AttributeError):
            return False
        if parameter is None or parameter.default is not None:
            return False
    return True


def build_dataset(cfg: ConfigNode, name: str, tokenizer: Any) -> Any:
    """The dataset of section `name` (`dataset` or `validation_dataset`), packed if configured."""
    dataset = instantiate(cfg[name], tokenizer=tokenizer)
    packing = read_section(cfg, "packed_sequence", PackedSequence)
    if packing.packed_sequence_size:
        dataset = pack_dataset(
            dataset, packing.packed_sequence_size, pad_token_id=pad_id(tokenizer),
            max_packs=packing.max_packs,
        )  # fmt: skip
    return dataset


def build_loaders(
    cfg: ConfigNode, tokenizer: Any, batch_size: int, seed: int, dp_rank: int, dp_size: int
) -> tuple[Any, Any, Any]:
    """(train dataset, train loader, validation loader or None): each dp rank reads its shard."""
    return build_dataset_loaders(
        cfg, lambda name: build_dataset(cfg, name, tokenizer), batch_size, dp_rank, dp_size,
        seed=seed, pad_token_id=pad_id(tokenizer),
    )  # fmt: skip


def pad_id(tokenizer: Any) -> int | None:
    """The tokenizer's pad id; None without a tokenizer (token-id datasets need no padding)."""
    return getattr(tokenizer, "pad_token_id", None)


def build_loss(cfg: ConfigNode) -> Any:
    """The loss from `loss_fn:` (default MaskedCrossEntropy)."""
    return instantiate(cfg.loss_fn) if "loss_fn" in cfg else MaskedCrossEntropy()


def real_tokens(batch: dict[str, torch.Tensor], pad_token_id: int | None) -> int:
    """Tokens that are not padding: the attention mask, or for packed rows the non-pad ids."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    if pad_token_id is None:
        return batch["input_ids"].numel()
    return int((batch["input_ids"] != pad_token_id).sum())
