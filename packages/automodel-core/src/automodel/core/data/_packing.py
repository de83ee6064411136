"""Packing whole documents into fixed-length rows, with per-document positions and labels."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..losses import IGNORE_INDEX
from ._dataset import SampleBuffer, TokenizedDataset
from ._errors import DataError, check_count

logger = logging.getLogger(__name__)


class PackedDataset(TokenizedDataset):
    """Rows of `packed_sequence_size` tokens, each holding whole documents plus padding."""

    def __init__(self, *args, packed_sequence_size: int, num_documents: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.packed_sequence_size = packed_sequence_size
        self.num_documents = num_documents
        self.num_real_tokens = 0

    @property
    def efficiency(self) -> float:
        """Real tokens divided by all token slots (1.0 means no padding)."""
        slots = len(self) * self.packed_sequence_size
        return self.num_real_tokens / slots if slots else 0.0


def pack_dataset(
    dataset: TokenizedDataset,
    packed_sequence_size: int,
    *,
    pad_token_id: int | None = None,
    max_packs: int | None = None,
) -> PackedDataset:
    """Pack documents into rows by best-fit decreasing; documents are never split across rows.

    `max_packs`: at most this many rows, of the dataset's first documents: they go into rows in
    dataset order, a row closing when the next document does not fit, and packing stops at
    `max_packs` rows (as NeMo AutoModel's serial packing with its `max_packs`); the documents
    after them are not used.

    Each row carries `position_ids` restarting at 0 for every document; transformers models limit
    attention to each document from them when called with `use_cache=False` and no
    `attention_mask` (see `collate`). The label of each document's first token is -100:
    the loss shifts labels by one, so that label would be predicted from the previous document.
    Padding at the end of a row has labels -100 and positions 0, 1, ... of its own.
    """
    size = int(packed_sequence_size)
    if size < 2:
        raise DataError(f"packed_sequence_size must be at least 2; got {packed_sequence_size!r}")
    lengths = dataset.lengths().tolist()
    longest = max(lengths, default=0)
    if longest > size:
        index = lengths.index(longest)
        raise DataError(
            f"sample {index} has {longest} tokens, more than packed_sequence_size={size}; "
            f"set the dataset's seq_length to at most {size}"
        )
    if max_packs is None:
        rows = _best_fit_decreasing(lengths, size)
    else:
        check_count("pack_dataset", "max_packs", max_packs)
        rows = _in_order(lengths, size, max_packs)
        if len(rows) == max_packs and rows[-1][-1] + 1 < len(lengths):
            logger.info(
                "max_packs %d: the first %d of %d documents packed, the rest left out",
                max_packs, rows[-1][-1] + 1, len(lengths),
            )  # fmt: skip
        lengths = lengths[: rows[-1][-1] + 1] if rows else []
    pad = dataset.pad_token_id if pad_token_id is None else pad_token_id

    buffer = SampleBuffer(("input_ids", "labels", "position_ids"))
    for row in rows:
        documents = [dataset[index] for index in row]
        padding = size - sum(lengths[index] for index in row)
        if padding:  # padding at the end of the row: a document of its own, with no labels
            ids = torch.full((padding,), pad, dtype=torch.long)
            documents.append({"input_ids": ids, "labels": torch.full_like(ids, IGNORE_INDEX)})
        buffer.add(**{k: v.tolist() for k, v in concat_documents(documents).items()})

    columns, offsets = buffer.tensors()
    packed = PackedDataset(
        columns,
        offsets,
        pad_token_id=pad,
        num_truncated=dataset.num_truncated,
        num_dropped=dataset.num_dropped,
        num_chunked=dataset.num_chunked,
        packed_sequence_size=size,
        num_documents=len(lengths),
    )
    packed.num_real_tokens = int(sum(lengths))
    logger.info(
        "packed %d documents into %d rows of %d tokens: packing efficiency %.1f%%",
        len(lengths),
        len(packed),
        size,
        100 * packed.efficiency,
    )
    return packed


def concat_documents(documents: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Documents end to end in one row: `input_ids`, `labels` (default: the ids) with each
    document's first label -100, and `position_ids` restarting at 0 for every document.

    The first label is masked because the loss shifts labels by one: it would be predicted from
    the previous document's last token. A document run alone has no target there either, so
    the row's loss is the documents' own. Transformers models keep the documents apart by their
    `position_ids` when called with `use_cache=False` and no `attention_mask` (see `collate`).
    """
    if not documents:
        raise DataError("no documents to concatenate")
    if "position_ids" in documents[0]:
        raise DataError(
            "these samples already hold several documents (packed rows with position_ids); "
            "concatenate documents, not rows"
        )
    ids = [torch.as_tensor(d["input_ids"], dtype=torch.long) for d in documents]
    labels = [torch.as_tensor(d.get("labels", d["input_ids"]), dtype=torch.long) for d in documents]
    lengths = torch.tensor([len(i) for i in ids])
    starts = lengths.cumsum(0) - lengths
    row_labels = torch.cat(labels)  # a copy: the samples stay as they were
    row_labels[starts[lengths > 0]] = IGNORE_INDEX
    positions = torch.arange(int(lengths.sum())) - starts.repeat_interleave(lengths)
    return {"input_ids": torch.cat(ids), "labels": row_labels, "position_ids": positions}


def _in_order(lengths: list[int], capacity: int, max_rows: int) -> list[list[int]]:
    """Documents in dataset order, each row closed when the next one does not fit; at most
    `max_rows` rows."""
    rows: list[list[int]] = []
    space = 0
    for index, length in enumerate(lengths):
        if not rows or length > space:
            if len(rows) == max_rows:
                break
            rows.append([])
            space = capacity
        rows[-1].append(index)
        space -= length
    return rows


def _best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Assign each document (longest first) to the fullest row it still fits in."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, row number), sorted
    for index in order:
        length = lengths[index]
        at = bisect.bisect_left(free, (length, -1))
        if at == len(free):
            rows.append([index])
            row_number, space = len(rows) - 1, capacity - length
        else:
            space, row_number = free.pop(at)
            rows[row_number].append(index)
            space -= length
        if space > 0:
            bisect.insort(free, (space, row_number))
    for row in rows:  # keep documents in dataset order within a row
        row.sort()
    return rows


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Number the documents of packed rows: a new one wherever a position is not the previous + 1."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[..., 1:] = position_ids[..., 1:] != position_ids[..., :-1] + 1
    return starts.long().cumsum(-1) - 1


def block_causal_mask(
    position_ids: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A 4-D additive mask (batch, 1, seq, seq): causal within each document, -inf across documents.

    Only for attention code that does not derive this from `position_ids` itself; transformers
    models do (with `use_cache=False` and no `attention_mask`), which also keeps flash-attention's
    variable-length path and avoids a seq x seq tensor.
    """
    docs = document_ids(position_ids)
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (docs[:, :, None] == docs[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
