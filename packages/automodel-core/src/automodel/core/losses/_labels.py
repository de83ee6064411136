"""Label helpers shared by the losses: shifting, counting and the loss normaliser."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Shift labels left by one along the last dim, padding with `ignore_index`: next-token targets."""
    pad = labels.new_full((*labels.shape[:-1], 1), ignore_index)
    return torch.cat([labels[..., 1:], pad], dim=-1)


def count_label_tokens(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Number of labels that are not `ignore_index`, as a 0-dim int64 tensor on the labels' device."""
    return (labels != ignore_index).sum()


def normaliser(
    labels: torch.Tensor,
    num_label_tokens: int | torch.Tensor | None,
    ignore_index: int,
) -> torch.Tensor:
    """Float32 divisor of the summed loss; at least 1, so a step without label tokens gives 0."""
    if num_label_tokens is None:
        num = count_label_tokens(labels, ignore_index)
    elif isinstance(num_label_tokens, torch.Tensor):
        num = num_label_tokens.to(labels.device)
    else:  # filled in on the device: a copy from host memory would wait for it
        num = torch.full((), float(num_label_tokens), device=labels.device)
    return num.to(torch.float32).clamp_min(1.0)


def flatten(
    inputs: torch.Tensor, labels: torch.Tensor, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """View `inputs` as [N, D] and `labels` as [N], checking that they hold the same tokens."""
    if inputs.shape[:-1] != labels.shape:
        raise ValueError(
            f"{name} {tuple(inputs.shape)} and labels {tuple(labels.shape)} do not match: "
            f"expected labels of shape {tuple(inputs.shape[:-1])}"
        )
    return inputs.reshape(-1, inputs.shape[-1]), labels.reshape(-1)


def check_chunk_len(chunk_len: int) -> int:
    """Return `chunk_len` if it is a positive int, else raise ValueError."""
    if not isinstance(chunk_len, int) or isinstance(chunk_len, bool) or chunk_len < 1:
        raise ValueError(f"chunk_len must be a positive int, got {chunk_len!r}")
    return chunk_len
