"""Pre-training on a `datasets` stream: text read as it is needed, tokenized on the fly and cut
into the same windows as indexed data, for corpora that do not fit on local disk.

Each data-parallel rank reads its own part of the stream (`datasets.distributed.
split_dataset_by_node`: whole shards when their number divides by the ranks, else every
rank-th example), and `datasets` shares a rank's shards among its dataloader workers. The
state of a rank's stream (where `datasets` is, and the tokens read but not yet in a window) is
its `state_dict()`, which the stateful dataloader saves in each checkpoint: a resumed run reads
exactly the windows that come next.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset

from ._errors import DataError
from ._loading import stream_source


class TextStream(IterableDataset):
    """`seq_length`-token windows (consecutive ones share a token, as `indexed_dataset`'s) of
    the documents of a `datasets` stream (`source`: `load_dataset` arguments), tokenized with
    EOS appended as `text_dataset` does."""

    def __init__(self, tokenizer: Any, source: dict[str, Any], seq_length: int, text_column: str):
        if seq_length < 2:
            raise DataError(f"seq_length must be at least 2 (a token and its target), got {seq_length}")  # fmt: skip
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise DataError("streaming_text_dataset: the tokenizer has no EOS token")
        self.tokenizer, self.eos = tokenizer, int(eos)
        self.source, self.seq_length, self.text_column = source, seq_length, text_column
        self.dp_rank, self.dp_size = 0, 1
        self._stream: Any = None  # the `datasets` stream of the iteration in progress
        self._buffer: list[int] = []
        self._resume: dict[str, Any] | None = None

    @property
    def where(self) -> str:
        """The file or dataset name the stream reads, for messages."""
        return str(self.source.get("data_files") or self.source["path"])

    def shard(self, dp_rank: int, dp_size: int) -> None:
        """Read data-parallel rank `dp_rank`'s part of the stream (before iterating)."""
        self.dp_rank, self.dp_size = dp_rank, dp_size

    def _open(self) -> Any:
        import datasets
        from datasets.distributed import split_dataset_by_node

        try:
            stream = datasets.load_dataset(**self.source, streaming=True)
        except Exception as e:  # datasets raises many kinds for missing or unreadable data
            raise DataError(f"{self.where}: could not be opened as a stream: {type(e).__name__}: {e}") from e  # fmt: skip
        if self.dp_size > 1:
            stream = split_dataset_by_node(stream, rank=self.dp_rank, world_size=self.dp_size)
        return stream

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self._stream = self._open()
        self._buffer = []
        if self._resume is not None:
            self._stream.load_state_dict(self._resume["stream"])
            self._buffer = list(self._resume["buffer"])
            self._resume = None
        length = self.seq_length
        for example in self._stream:
            if self.text_column not in example:
                raise DataError(f"{self.where}: no column {self.text_column!r} (columns: {', '.join(example)})")  # fmt: skip
            text = example[self.text_column]
            if text:
                ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
                self._buffer.extend([*ids, self.eos])
            while len(self._buffer) >= length:
                window = torch.tensor(self._buffer[:length], dtype=torch.long)
                del self._buffer[: length - 1]  # the last token starts the next window
                yield {"input_ids": window, "labels": window.clone()}

    def state_dict(self) -> dict[str, Any]:
        """Where this rank's stream is: `datasets`' position and the tokens not yet in a window."""
        stream = self._stream.state_dict() if self._stream is not None else None
        return {"dp_rank": self.dp_rank, "dp_size": self.dp_size, "stream": stream, "buffer": list(self._buffer)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` at the next iteration (same data-parallel layout)."""
        if (state.get("dp_rank"), state.get("dp_size")) != (self.dp_rank, self.dp_size):
            raise DataError(
                f"the stream position was saved by data-parallel rank {state.get('dp_rank')} of "
                f"{state.get('dp_size')}, and this is rank {self.dp_rank} of {self.dp_size}: a "
                "stream's position does not convert between layouts; resume with the same "
                "number of data-parallel ranks (or use indexed data, whose position converts)"
            )
        self._resume = state if state.get("stream") is not None else None


def streaming_text_dataset(
    tokenizer: Any,
    path: str,
    seq_length: int,
    *,
    text_column: str = "text",
    split: str = "train",
    name: str | None = None,
) -> TextStream:
    """Pre-training windows of a `datasets` stream: a Hub name, a local folder, or a JSONL /
    parquet / text file (read with the matching builder), tokenized as it is read."""
    return TextStream(tokenizer, stream_source(path, split, name), seq_length, text_column)
