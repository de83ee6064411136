"""`embedding_row_repair:` input-embedding rows a checkpoint left near zero, repaired before
training (`automodel.core.models.repair_embedding_rows`)."""

from __future__ import annotations

import logging

from torch import nn

from automodel.core.config import ConfigNode

from ._errors import config_problem
from ._sections import EmbeddingRowRepair, read_section

log = logging.getLogger("automodel.recipes")


def apply_embedding_repair(model: nn.Module, cfg: ConfigNode) -> None:
    """With an enabled `embedding_row_repair:` section, repair the whole model's damaged rows."""
    if "embedding_row_repair" not in cfg:
        return
    section = read_section(cfg, "embedding_row_repair", EmbeddingRowRepair)
    if not section.enabled:
        return
    # on use: automodel.core.models imports transformers' model code (and, through it,
    # torchao), which `validate` never needs
    from automodel.core.models import repair_embedding_rows

    try:
        done = repair_embedding_rows(model, section.min_norm, section.max_rows)
    except ValueError as e:
        raise config_problem(cfg, "embedding_row_repair", str(e)) from e
    if done.row_ids:
        log.warning(
            "embedding_row_repair: %d input-embedding row(s) repaired from the LM head "
            "(token ids %s), now of norm %.4g (the healthy rows' RMS; smallest norm before %.3g)",
            len(done.row_ids), list(done.row_ids), done.target_norm, done.min_norm_before,
        )  # fmt: skip
    else:
        log.info(
            "embedding_row_repair: no input-embedding row of norm <= %g (smallest %.3g)",
            section.min_norm, done.min_norm_before,
        )  # fmt: skip
