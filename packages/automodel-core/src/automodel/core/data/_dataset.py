"""Tokenized samples stored compactly as flat int32 tensors."""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset


class TokenizedDataset(Dataset):
    """A map-style dataset of variable-length samples (`input_ids`, `labels`, ...) of int tokens."""

    def __init__(
        self,
        columns: dict[str, torch.Tensor],
        offsets: torch.Tensor,
        *,
        pad_token_id: int = 0,
        num_truncated: int = 0,
        num_dropped: int = 0,
        num_chunked: int = 0,
    ):
        self.columns = columns
        self.offsets = offsets
        self.pad_token_id = pad_token_id
        self.num_truncated = num_truncated
        self.num_dropped = num_dropped
        self.num_chunked = num_chunked  # long samples split into several (truncation="chunk")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return {name: column[start:end].long() for name, column in self.columns.items()}

    def lengths(self) -> torch.Tensor:
        """The number of tokens of each sample."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def num_tokens(self) -> int:
        """The number of tokens of all samples together."""
        return int(self.offsets[-1])


class SampleBuffer:
    """Collects samples one by one into flat int32 arrays, then freezes them into a dataset."""

    def __init__(self, names: Sequence[str] = ("input_ids", "labels")):
        self._columns = {name: array("i") for name in names}
        self._offsets = array("q", [0])

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def add(self, **sample: Sequence[int]) -> None:
        """Append one sample; every column must be given and have the same length."""
        length = None
        for name, column in self._columns.items():
            values = sample[name]
            if length is None:
                length = len(values)
            elif len(values) != length:
                raise ValueError(f"column {name!r} has {len(values)} tokens, expected {length}")
            column.extend(values)
        self._offsets.append(self._offsets[-1] + (length or 0))

    def tensors(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The collected columns and offsets as tensors."""
        columns = {name: _to_tensor(values, torch.int32) for name, values in self._columns.items()}
        return columns, _to_tensor(self._offsets, torch.int64)


def _to_tensor(values: array, dtype: torch.dtype) -> torch.Tensor:
    if not values:
        return torch.zeros(0, dtype=dtype)
    return torch.frombuffer(values, dtype=dtype).clone()
