"""Loading raw rows from local files (by suffix) or the Hugging Face Hub, with clear errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

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


def load_rows(
    path: str | Path,
    split: str = "train",
    *,
    name: str | None = None,
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """Load a local jsonl/json/parquet/csv/txt file or directory, or a Hub dataset, as one split."""
    text = str(path)
    local = Path(text).expanduser()
    builder = _BUILDERS.get(local.suffix.lower())
    if builder is not None or local.exists() or text.startswith((".", "/", "~")):
        if not local.exists():
            raise DataError(f"dataset file not found: {text}")
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
        try:
            return _load(
                builder, local_split, source=text, data_files=str(local), cache_dir=cache_dir
            )
        except DataError:
            if builder == "json":
                _check_json_file(local)
            raise
    return _load(text, split, source=text, name=name, cache_dir=cache_dir)


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


def _check_json_file(path: Path) -> None:
    """Raise a DataError naming the first line of a JSON (lines) file that does not parse."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("["):  # one JSON document, not JSON lines
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        return
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


def require_columns(rows: datasets.Dataset, columns: Iterable[str], source: str) -> None:
    """Raise a DataError naming each missing column and the columns that are present."""
    present = list(rows.column_names)
    missing = [c for c in columns if c not in present]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise DataError(
            f"{source}: missing column{'s' if len(missing) > 1 else ''} {names}; "
            f"the dataset has columns: {', '.join(present) or '(none)'}"
        )
