"""From rows to a TokenizedDataset: each builder's encoding, then the truncation policy."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..losses import IGNORE_INDEX
from ._dataset import SampleBuffer, TokenizedDataset
from ._errors import DataError

logger = logging.getLogger(__name__)

TRUNCATION_MODES = ("truncate", "drop", "error")
# Plain text may also be split: a document is a stream of tokens, not a prompt and its answer.
TEXT_TRUNCATION_MODES = (*TRUNCATION_MODES, "chunk")

# One encoded sample (input_ids, labels), or None for a sample with nothing to learn from.
Encoded = tuple[list[int], list[int]] | None


def check_options(
    seq_length: int | None, truncation: str, modes: tuple[str, ...] = TRUNCATION_MODES
) -> None:
    """A DataError for a truncation mode not in `modes` or a seq_length that is not positive."""
    if truncation not in modes:
        only_text = " (chunk splits plain text only: text_dataset)" if truncation == "chunk" else ""
        raise DataError(
            f"truncation must be one of {', '.join(modes)}; got {truncation!r}{only_text}"
        )
    if seq_length is not None and (not isinstance(seq_length, int) or seq_length < 1):
        raise DataError(f"seq_length must be a positive integer; got {seq_length!r}")


def source_of(builder: str, path: str | Path, split: str) -> str:
    """How messages name a builder's data: `builder(path, split=...)`."""
    return f"{builder}({path}, split={split})"


def eos_id(tokenizer: Any) -> int:
    """The tokenizer's EOS id; a DataError when it has none."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError("the tokenizer has no EOS token (eos_token_id is None)")
    return int(eos)


def build_dataset(
    rows: Any,
    encode: Callable[[Mapping[str, list]], list[Encoded]],
    tokenizer: Any,
    seq_length: int | None,
    truncation: str,
    source: str,
) -> TokenizedDataset:
    """Encode all rows, apply the truncation policy, count and log what was changed."""
    buffer = SampleBuffer()
    index = truncated = too_long = no_target = chunked = chunks = 0
    for batch in rows.iter(batch_size=256):
        for encoded in encode(batch):
            if encoded is None:
                no_target += 1
                index += 1
                continue
            input_ids, labels = encoded
            if seq_length is not None and len(input_ids) > seq_length:
                if truncation == "error":
                    raise DataError(
                        f"{source}: sample {index} has {len(input_ids)} tokens, more than "
                        f"seq_length={seq_length} (set truncation to 'truncate' or 'drop', "
                        "'chunk' for plain text, or raise seq_length)"
                    )
                if truncation == "drop":
                    too_long += 1
                    index += 1
                    continue
                if truncation == "chunk":
                    chunked += 1
                    for start in range(0, len(input_ids), seq_length):
                        end = start + seq_length
                        buffer.add(input_ids=input_ids[start:end], labels=labels[start:end])
                        chunks += 1
                    index += 1
                    continue
                truncated += 1
                input_ids, labels = input_ids[:seq_length], labels[:seq_length]
                if all(label == IGNORE_INDEX for label in labels):
                    no_target += 1
                    index += 1
                    continue
            buffer.add(input_ids=input_ids, labels=labels)
            index += 1
    dropped = too_long + no_target
    if chunked:
        logger.info(
            "%s: %d of %d samples longer than seq_length=%s split into %d chunks",
            source,
            chunked,
            index,
            seq_length,
            chunks,
        )
    if truncated or dropped:
        logger.warning(
            "%s: %d of %d samples truncated to seq_length=%s, %d dropped as longer than "
            "seq_length, %d dropped with no tokens to learn from",
            source,
            truncated,
            index,
            seq_length,
            too_long,
            no_target,
        )
    if len(buffer) == 0:
        raise DataError(
            f"{source}: no samples left out of {index} ({too_long} longer than "
            f"seq_length={seq_length} dropped, {no_target} with no tokens to learn from)"
        )
    columns, offsets = buffer.tensors()
    pad = getattr(tokenizer, "pad_token_id", None)
    dataset = TokenizedDataset(
        columns,
        offsets,
        pad_token_id=int(pad if pad is not None else eos_id(tokenizer)),
        num_truncated=truncated,
        num_dropped=dropped,
        num_chunked=chunked,
    )
    logger.info("%s: %d samples, %d tokens", source, len(dataset), dataset.num_tokens)
    return dataset
