"""Loading raw rows from local files (by suffix) or the Hugging Face Hub, with clear errors."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import DataError

if TYPE_CHECKING:  # `datasets` is imported on first load: it takes a second to import
    import datasets

logger = logging.getLogger(__name__)

# File suffix -> the `datasets` builder that reads it.
_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".txt": "text",
    ".arrow": "arrow",
}
# A local JSON(L) file up to this size is parsed here: importing `datasets` and writing its
# cache costs about a second at every start. Larger files go through its memory-mapped cache.
_DIRECT_JSON_BYTES = 64 << 20
_SLICED_SPLIT = re.compile(r"^(?P<base>[^\[\]]+)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


class JsonRows:
    """The rows of a small local JSON(L) file, held in memory and read like a `datasets.Dataset`."""

    def __init__(self, records: list[dict[str, Any]]):
        names: dict[str, None] = {}  # every key in order of first appearance; absent reads None
        for record in records:
            names.update(dict.fromkeys(record))
        self.column_names = list(names)
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def select(self, indices: Iterable[int]) -> JsonRows:
        """The rows at `indices`, in that order, like `datasets.Dataset.select`."""
        return JsonRows([self._records[i] for i in indices])

    def __getitem__(self, key: str | int) -> Any:
        """A column's values by name, or a row by index."""
        if isinstance(key, int):
            return {name: self._records[key].get(name) for name in self.column_names}
        if key not in self.column_names:
            raise KeyError(key)
        return [record.get(key) for record in self._records]

    def iter(self, batch_size: int) -> Iterator[dict[str, list]]:
        """Batches of rows as {column: values}, like `datasets.Dataset.iter`."""
        for start in range(0, len(self._records), batch_size):
            chunk = self._records[start : start + batch_size]
            yield {name: [record.get(name) for record in chunk] for name in self.column_names}


def load_rows(
    path: str | Path,
    split: str = "train",
    *,
    name: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    shuffle_seed: int | None = None,
) -> datasets.Dataset | JsonRows:
    """Load a local jsonl/json/parquet/csv/txt file or directory, or a Hub dataset, as one split.

    A local JSON(L) file under 64 MiB read whole (no `[...]` slice in `split`) comes back as
    `JsonRows`, parsed without `datasets`; everything else as a `datasets.Dataset`.
    `shuffle_seed` shuffles the whole split before its slice is taken (`train[:1000]`: 1000
    random rows), in the order `datasets.Dataset.shuffle(seed=shuffle_seed)` gives.
    `revision`: a Hub dataset's branch, tag or commit.
    """
    if shuffle_seed is not None:
        base, window = _split_and_slice(split)
        rows = load_rows(path, base, name=name, revision=revision, cache_dir=cache_dir)
        order = np.random.default_rng(shuffle_seed).permutation(len(rows))[window]
        return rows.select(order.tolist())
    text = str(path)
    local = _local_path(text)
    if local is not None:
        builder = _BUILDERS.get(local.suffix.lower())
        if local.is_dir():
            return _load(text, split, source=text, name=name, cache_dir=cache_dir)
        if builder is None:
            supported = ", ".join(sorted(_BUILDERS))
            raise DataError(
                f"{text}: unknown data file type {local.suffix!r} (supported: {supported})"
            )
        if _is_blank(local):
            raise DataError(f"{text}: the file is empty")
        # A single local file is one split; keep a slice like "train[:100]" if one was given.
        local_split = "train" + split[split.index("[") :] if "[" in split else "train"
        if builder == "json" and local_split == "train" and _small(local):
            try:
                records = _json_records(local)
            except DataError:
                records = None  # not plain rows of objects: `datasets` reads more layouts
            if records:
                return JsonRows(records)
        try:
            return _load(
                builder, local_split, source=text, data_files=str(local), cache_dir=cache_dir
            )
        except DataError:
            if builder == "json":
                _json_records(local)  # raises naming the first bad line
            raise
    hub = {"revision": revision} if revision is not None else {}
    return _load(text, split, source=text, name=name, cache_dir=cache_dir, **hub)


def _split_and_slice(split: str) -> tuple[str, slice]:
    """("train", slice(None, 100)) for "train[:100]"; the whole split for a plain name."""
    if "[" not in split:
        return split, slice(None)
    match = _SLICED_SPLIT.match(split)
    if match is None:
        raise DataError(
            f"split {split!r}: with shuffle_seed, slice the split with row numbers, like "
            "train[:1000] or train[100:200]"
        )
    start, stop = (int(v) if v else None for v in (match["start"], match["stop"]))
    return match["base"], slice(start, stop)


def _small(path: Path) -> bool:
    return path.stat().st_size <= _DIRECT_JSON_BYTES


def _is_blank(path: Path) -> bool:
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            if chunk.strip():
                return False
    return True


def _load(path: str, split: str, *, source: str, **kwargs) -> datasets.Dataset:
    import datasets

    try:
        rows = datasets.load_dataset(path, split=split, **kwargs)
    except (datasets.exceptions.DatasetsError, FileNotFoundError, ValueError, OSError) as exc:
        detail = str(exc) or type(exc).__name__
        if exc.__cause__ is not None:
            detail += f" ({exc.__cause__})"
        raise DataError(f"could not load dataset {source!r} (split {split!r}): {detail}") from exc
    except StopIteration as exc:  # `datasets` raises this on some empty files
        raise DataError(f"{source}: the dataset is empty") from exc
    if not isinstance(rows, datasets.Dataset):
        raise DataError(f"{source}: expected one split, got {type(rows).__name__}")
    if len(rows) == 0:
        raise DataError(f"{source} (split {split!r}): the dataset is empty")
    return rows


def _json_records(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON lines file or of a JSON list; a DataError names the first bad line."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("["):  # one JSON document, not JSON lines
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        if not all(isinstance(v, dict) for v in value):
            raise DataError(f"{path}: expected a JSON list of objects, one per row")
        return value
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{lineno}: invalid JSON on line {lineno}: {exc.msg} (column {exc.colno})"
            ) from exc
        if not isinstance(value, dict):
            raise DataError(
                f"{path}:{lineno}: line {lineno} is a JSON {type(value).__name__}, "
                "expected an object with one field per column"
            )
        records.append(value)
    return records


def require_columns(rows: datasets.Dataset | JsonRows, columns: Iterable[str], source: str) -> None:
    """Raise a DataError naming each missing column and the columns that are present."""
    present = list(rows.column_names)
    missing = [c for c in columns if c not in present]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise DataError(
            f"{source}: missing column{'s' if len(missing) > 1 else ''} {names}; "
            f"the dataset has columns: {', '.join(present) or '(none)'}"
        )


def _local_path(text: str) -> Path | None:
    """The local file or folder `text` names (DataError if it does not exist), or None for a
    Hub dataset name."""
    local = Path(text).expanduser()
    if local.suffix.lower() in _BUILDERS or local.exists() or text.startswith((".", "/", "~")):
        if not local.exists():
            raise DataError(f"dataset file not found: {text}")
        return local
    return None


def stream_source(
    path: str | Path, split: str = "train", name: str | None = None
) -> dict[str, Any]:
    """The `datasets.load_dataset` arguments that read `path` (a local file by its suffix, a
    folder, or a Hub name) as one split; add `streaming=True` to stream it."""
    text = str(path)
    local = _local_path(text)
    if local is None:
        return {"path": text, "name": name, "split": split}
    if local.is_dir():
        return {"path": text, "split": split}
    builder = _BUILDERS.get(local.suffix.lower())
    if builder is None:
        raise DataError(f"{text}: unknown data file type {local.suffix!r} (supported: {', '.join(sorted(_BUILDERS))})")  # fmt: skip
    return {"path": builder, "data_files": str(local), "split": "train"}


def stream_column(
    path: str | Path,
    column: str,
    split: str = "train",
    *,
    name: str | None = None,
    batch_size: int = 1000,
) -> Iterator[list[Any]]:
    """Batches of one column of a local file or Hub dataset, read as a `datasets` stream: memory
    stays flat however large the data (for preprocessing corpora, not for training)."""
    import datasets

    source = stream_source(path, split, name)
    try:
        stream = datasets.load_dataset(**source, streaming=True)
        first = True
        for batch in stream.iter(batch_size=batch_size):
            if first and column not in batch:
                raise DataError(f"{path}: no column {column!r} (columns: {', '.join(batch)})")
            first = False
            yield batch[column]
    except DataError:
        raise
    except Exception as e:  # datasets raises many kinds for unreadable or missing data
        raise DataError(
            f"{path}: could not be read as a dataset stream: {type(e).__name__}: {e}"
        ) from e
