"""Cross-entropy over the non-ignored labels, computed on the full logits in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._labels import IGNORE_INDEX, flatten, normaliser


class MaskedCrossEntropy(nn.Module):
    """Summed float32 token cross-entropy divided by the label-token count of the step."""

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        num_label_tokens: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of logits [..., V] against labels [...] already aligned (see `shift_labels`)."""
        logits, labels = flatten(logits, labels, "logits")
        loss_sum = F.cross_entropy(
            logits.float(), labels, ignore_index=self.ignore_index, reduction="sum"
        )
        return loss_sum / normaliser(labels, num_label_tokens, self.ignore_index)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"
