"""Context parallelism in the recipes: sequences split over `cp_size` ranks (automodel.distributed).

The model's attention becomes `AllGatherContextParallel.hf_attention`, registered with
transformers under `HF_ATTENTION_NAME`; each micro-batch is split along the sequence before its
forward, so label tokens are counted on the shards and summed over the dp × cp ranks. Packed
rows keep their documents apart (`documents=True`: attention within each document).
"""

from __future__ import annotations

from torch import nn

from automodel.core.config import ConfigNode
from automodel.distributed import (
    HF_ATTENTION_NAME,
    AllGatherContextParallel,
    layer_types_outside_attention,
    token_mixers_outside_attention,
)

from ._builders import model_config
from ._errors import config_problem

_SPLIT_ONLY_IN_ATTENTION = (
    "Context parallelism splits each sequence over ranks and joins it in attention only, so "
    "these layers would each see a fragment; set cp_size: 1 for this model"
)


def check_context_parallel_layers(cfg: ConfigNode, cp_size: int) -> None:
    """With cp_size > 1, refuse before anything is built a model whose config names layers
    that mix tokens outside full attention (when its config can be read without downloading;
    `attend_across_ranks` checks the built model in any case)."""
    if cp_size == 1 or "model" not in cfg:
        return
    try:
        config = model_config(cfg, "model")
    except Exception:  # not readable here (offline, remote code): checked once it is built
        return
    found = layer_types_outside_attention(config) if config is not None else []
    if found:
        message = f"the model mixes tokens outside full attention: {'; '.join(found)}. "
        raise config_problem(cfg, "distributed.cp_size", message + _SPLIT_ONLY_IN_ATTENTION)


def attend_across_ranks(
    model: nn.Module, cp: AllGatherContextParallel | None, cfg: ConfigNode
) -> None:
    """Route `model`'s attention through `cp` (every rank's keys and values); nothing without cp."""
    if cp is None:
        return
    mixers = token_mixers_outside_attention(model)
    if mixers:
        raise config_problem(
            cfg, "distributed.cp_size",
            f"{type(model).__name__} mixes tokens outside full attention: {'; '.join(mixers)}. "
            + _SPLIT_ONLY_IN_ATTENTION,
        )  # fmt: skip
    from transformers import AttentionInterface

    AttentionInterface.register(HF_ATTENTION_NAME, cp.hf_attention)
    try:
        model.set_attn_implementation(HF_ATTENTION_NAME)
    except (ValueError, AttributeError, NotImplementedError) as e:
        raise config_problem(
            cfg, "distributed.cp_size",
            f"{type(model).__name__} cannot switch its attention implementation ({e}); context "
            "parallelism needs a transformers model that uses the attention interface",
        ) from e  # fmt: skip
