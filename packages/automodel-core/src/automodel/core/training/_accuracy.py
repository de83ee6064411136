"""Answer accuracy under teacher forcing: the samples whose every labeled token is the argmax."""

from __future__ import annotations

import torch

from ..losses import IGNORE_INDEX


def exact_match_counts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(samples whose every labeled token the model ranks first, samples with any label).

    `labels` are aligned with `logits` (already shifted: position t labels the token t + 1).
    Under teacher forcing, every labeled token being the argmax is exactly what greedy decoding
    from the prompt would produce, so this is the answer accuracy of greedy generation, from
    the validation forward alone.
    """
    labeled = labels != IGNORE_INDEX
    wrong = (logits.argmax(dim=-1) != labels) & labeled
    has_label = labeled.any(dim=-1)
    hits = has_label & ~wrong.any(dim=-1)
    return int(hits.sum()), int(has_label.sum())  # one host sync per validation batch
