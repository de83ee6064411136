"""What the retrieval recipes take from finetune.llm by name: its loop, checkpoints and
validation pass. Each recipe adds its own `setup`, `forward_loss`, `count_targets`,
`real_tokens` and `validation_totals`."""

from __future__ import annotations

import torch

from automodel.core.config import ConfigNode

from .. import RunViews
from ..llm.finetune import FinetuneRecipeForCausalLM as Finetune


class RetrievalLoop(RunViews):
    """finetune.llm's training loop over batches that need no preparing (no labels to shift,
    no sequence to split)."""

    run_train_validation_loop = Finetune.run_train_validation_loop
    train_steps = Finetune.train_steps  # calls forward_loss, count_targets, real_tokens
    forward_backward = Finetune.forward_backward
    training_state = Finetune.training_state
    validate = Finetune.validate  # calls validation_totals
    save = Finetune.save

    def __init__(self, cfg: ConfigNode):
        self.cfg = cfg
        self.pipeline = None  # the recipes' check() refuses pp_size > 1

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A training batch as it comes."""
        return batch
