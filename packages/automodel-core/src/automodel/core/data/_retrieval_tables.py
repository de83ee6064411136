"""Retrieval rows and corpora as tables: the columns a row may use, the rows of a table with
their queries checked, and a corpus file read into {id: text}."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import DataError
from ._loading import load_rows

_QUERY_COLUMNS = ("query", "question")
_POSITIVE_COLUMNS = ("pos_ids", "pos_doc")
NEGATIVE_COLUMNS = ("neg_ids", "neg_doc")
_COLUMNS = (_QUERY_COLUMNS, _POSITIVE_COLUMNS, NEGATIVE_COLUMNS)


@dataclass
class Corpus:
    """A corpus's {id: text}, where it was read, and the instructions of their metadata
    ((query, passage); None for a corpus file of ours, which has none)."""

    texts: dict[str, str]
    where: str
    instructions: tuple[str, str] | None = None


@dataclass
class Row:
    """One training row before its passages are looked up: `corpus` is None for inline
    passages, or their `corpus_id` until every source is read."""

    source: str
    index: int  # the row's number in its source, for errors
    query: str
    positive: tuple[str | None, Any]  # (column, value)
    negative: tuple[str | None, Any]
    corpus: Corpus | str | None


def table_rows(rows: Any, source: str, corpus: Corpus | None) -> list[Row]:
    """The checked rows of a table, their passages inline or ids of `corpus`."""
    return [Row(source, *row, corpus) for row in query_rows(rows, source)]


def corpus_file(path: Any) -> Corpus | None:
    """The corpus file at `path` (None: the rows' passages are inline)."""
    return None if path is None else Corpus(load_corpus(path), str(path))


def load_corpus(
    path: str | Path, split: str = "train", *, id_column: str = "id", text_column: str = "text"
) -> dict[str, str]:
    """{document id: text} of a corpus file or `datasets` source; ids are compared as strings."""
    rows = load_rows(path, split)
    for column in (id_column, text_column):
        if column not in rows.column_names:
            raise DataError(
                f"corpus {path}: missing column {column!r}; it has {', '.join(rows.column_names)}"
            )
    corpus: dict[str, str] = {}
    for index, (doc_id, text) in enumerate(zip(rows[id_column], rows[text_column], strict=True)):
        if not isinstance(text, str):
            raise DataError(f"corpus {path}: row {index}: {text_column!r} is not text")
        if str(doc_id) in corpus:
            raise DataError(f"corpus {path}: row {index}: the id {doc_id!r} appears twice")
        corpus[str(doc_id)] = text
    if not corpus:
        raise DataError(f"corpus {path}: no documents")
    return corpus


def _require_any(rows: Any, names: Iterable[str], source: str) -> str:
    """The first of `names` that is a column of `rows`; a DataError naming them if none is."""
    names = tuple(names)
    for name in names:
        if name in rows.column_names:
            return name
    raise DataError(
        f"{source}: no {' or '.join(repr(n) for n in names)} column; the rows have "
        f"{', '.join(rows.column_names) or '(none)'}"
    )


def query_rows(rows: Any, source: str) -> Iterator[tuple[int, str, tuple, tuple]]:
    """(row number, query, (positive column, value), (negative column, value)) of each row, the
    query checked to be text; a DataError for a missing query or positive column, or no rows."""
    _require_any(rows, _QUERY_COLUMNS, source)
    _require_any(rows, _POSITIVE_COLUMNS, source)
    columns = zip(*(_per_row(rows, names) for names in _COLUMNS), strict=True)
    for index, ((_, query), positive, negative) in enumerate(columns):
        if not isinstance(query, str) or not query:
            raise DataError(f"{source}: row {index}: needs a non-empty 'query' (or 'question')")
        yield index, query, positive, negative
    if not len(rows):
        raise DataError(f"{source}: no rows")


def _per_row(rows: Any, names: tuple[str, ...]) -> list[tuple[str | None, Any]]:
    """Each row's (column, value) of the first of `names` it has a value in; (None, None)."""
    present = [(name, rows[name]) for name in names if name in rows.column_names]
    return [
        next(((name, values[i]) for name, values in present if values[i] is not None), (None, None))
        for i in range(len(rows))
    ]
