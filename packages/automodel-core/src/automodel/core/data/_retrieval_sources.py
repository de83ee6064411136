"""Where retrieval training rows come from, and how several sources make one dataset.

A source is one of:

- a rows file or `datasets` source (passages inline, or ids of `corpus`);
- a subset in NeMo AutoModel's Hub layout: a folder holding `dataset_metadata.json`
  (`corpus_id`, optional `query_instruction` / `passage_instruction`), `queries.parquet`
  (`question`, `pos_doc` and `neg_doc` ids) and `corpus.parquet` (`id`, `text`); a folder of
  such subsets is all of them, in sorted order; `hf://<org>/<repo>[/<subset>]` is the same
  downloaded from the Hub (`nvidia/embed-nemotron-dataset-v1` is one);
- their corpus-id JSON, `{"corpus": [{"path": <folder>}], "data": [rows]}`, whose rows name a
  `corpus_id` and whose corpus folders hold `merlin_metadata.json` and a `train` split of `id`
  and `text` (what their `data_preparation.py` writes).

A list of sources is read in order, each optionally as `{"path", "corpus", "num_samples"}`:
`num_samples` rows drawn from it without replacement (`random.Random(seed)`, as they draw
them), all of it when it has no more. `split`'s row slice and `shuffle_seed` then apply to
the rows of all sources together.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import DataError
from ._loading import JsonRows, load_rows

logger = logging.getLogger(__name__)

HUB = "hf://"
_QUERY_COLUMNS = ("query", "question")
_POSITIVE_COLUMNS = ("pos_ids", "pos_doc")
NEGATIVE_COLUMNS = ("neg_ids", "neg_doc")
_COLUMNS = (_QUERY_COLUMNS, _POSITIVE_COLUMNS, NEGATIVE_COLUMNS)
_ENTRY_KEYS = ("path", "corpus", "num_samples")
_METADATA = "dataset_metadata.json"
_MERLIN = "merlin_metadata.json"


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


@dataclass
class _Entry:
    path: str
    corpus: Any = None  # for a rows file whose passages are ids
    num_samples: int | None = None
    kind: str = "rows"  # rows | hub | layout | their_json
    found: Any = None  # a layout's folder, or their JSON's object


def read_rows(
    path: Any,
    split: str,
    *,
    corpus: Any,
    name: str | None,
    shuffle_seed: int | None,
    seed: int,
) -> list[Row]:
    """The rows of `path` (one source or a list), sampled, concatenated and sliced, each with
    its corpus."""
    entries = _entries(path, corpus)
    corpora: dict[str, Corpus] = {}  # their corpus ids, shared by every source as there
    if len(entries) == 1 and entries[0].num_samples is None and entries[0].kind == "rows":
        entry = entries[0]  # one rows file: `split` and `shuffle_seed` read it as before
        rows = load_rows(entry.path, split, name=name, shuffle_seed=shuffle_seed)
        source = f"retrieval_dataset({entry.path}, split={split})"
        return _table_rows(rows, source, _corpus_file(entry.corpus))
    base, window = _split_window(split)
    rows = []
    for entry in entries:
        rows += _sample(_read_entry(entry, base, name, corpora), entry.num_samples, seed)
    if shuffle_seed is not None:  # the permutation `datasets.Dataset.shuffle(seed)` makes
        order = np.random.default_rng(shuffle_seed).permutation(len(rows))
        rows = [rows[i] for i in order]
    rows = rows[window]
    for row in rows:
        if isinstance(row.corpus, str):
            if row.corpus not in corpora:
                raise DataError(
                    f"{row.source}: row {row.index}: corpus_id {row.corpus!r} is not one of the "
                    f"corpora read ({', '.join(sorted(corpora)) or 'none'})"
                )
            row.corpus = corpora[row.corpus]
    return rows


def _entries(path: Any, corpus: Any) -> list[_Entry]:
    """`path` as a list of sources, each with its kind, corpus and sample size."""
    items = list(path) if isinstance(path, Sequence) and not isinstance(path, str) else [path]
    if not items:
        raise DataError("retrieval_dataset: path is an empty list; give at least one source")
    entries = []
    for item in items:
        if isinstance(item, Mapping):
            unknown = sorted(set(item) - set(_ENTRY_KEYS))
            if unknown or "path" not in item:
                raise DataError(
                    f"retrieval_dataset: source {dict(item)!r}: a source is a path or a mapping "
                    f"of {', '.join(_ENTRY_KEYS)} (path required)"
                    + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                )
            count = item.get("num_samples")
            if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):  # fmt: skip
                raise DataError(
                    f"retrieval_dataset: source {item['path']}: num_samples must be an integer "
                    f">= 0 (or null for every row), got {count!r}"
                )
            entry = _Entry(str(item["path"]), item.get("corpus"), count)
        else:
            entry = _Entry(str(item))
        entry.kind, entry.found = _kind(entry.path)
        if entry.corpus is None and (entry.kind == "rows" or len(items) == 1):
            entry.corpus = corpus  # a list's `corpus` is for its rows files
        if entry.corpus is not None and entry.kind != "rows":
            raise DataError(
                f"retrieval_dataset: source {entry.path}: carries its own corpus; `corpus` is "
                "for rows files that name passages by id"
            )
        entries.append(entry)
    return entries


def _kind(path: str) -> tuple[str, Any]:
    """What `path` is: ("hub", None), ("layout", its folder), ("their_json", its object) or
    ("rows", None)."""
    if path.startswith(HUB):
        return "hub", None
    local = Path(path).expanduser()
    if local.is_dir() and _subsets(local):
        return "layout", local
    data = _their_json(local)
    return ("their_json", data) if data is not None else ("rows", None)


def _split_window(split: str) -> tuple[str, slice]:
    """("train", slice(8, 24)) for "train[8:24]"."""
    base, _, rest = split.partition("[")
    if not rest:
        return split, slice(None)
    try:
        start, stop = (int(b) if b.strip() else None for b in rest.rstrip("]").split(":"))
    except ValueError:
        raise DataError(
            f"retrieval_dataset: split {split!r}: with several sources (or their layout) the "
            "rows of all of them are sliced by row numbers, like train[:1000] or train[100:200]"
        ) from None
    return base, slice(start, stop)


def _sample(rows: list[Row], count: int | None, seed: int) -> list[Row]:
    """`count` rows in the order `random.Random(seed).sample(rows, count)` draws them."""
    if count is not None and count >= len(rows) and rows:
        logger.warning("%s: num_samples is %d, it has %d rows: all of them", rows[0].source, count, len(rows))  # fmt: skip
    if count is None or count >= len(rows):
        return rows
    return [rows[i] for i in random.Random(seed).sample(range(len(rows)), count)]


def _read_entry(
    entry: _Entry, split: str, name: str | None, corpora: dict[str, Corpus]
) -> list[Row]:
    if entry.kind == "hub":
        return _read_subsets(entry.path, _download(entry.path), corpora)
    if entry.kind == "layout":
        return _read_subsets(entry.path, entry.found, corpora)
    if entry.kind == "their_json":
        return _read_their_json(entry.path, entry.found, corpora)
    rows = load_rows(entry.path, split, name=name)
    source = f"retrieval_dataset({entry.path}, split={split})"
    return _table_rows(rows, source, _corpus_file(entry.corpus))


def _table_rows(rows: Any, source: str, corpus: Corpus | None) -> list[Row]:
    return [Row(source, *row, corpus) for row in query_rows(rows, source)]


def _corpus_file(path: Any) -> Corpus | None:
    return None if path is None else Corpus(load_corpus(path), str(path))


# -- their Hub layout -----------------------------------------------------------------------


def _subsets(folder: Path) -> list[Path]:
    """The subset folders of `folder` in their Hub layout (itself, if it is one), sorted."""
    if (folder / _METADATA).is_file():
        return [folder]
    return sorted(p.parent for p in folder.glob(f"**/{_METADATA}"))


def _download(uri: str) -> Path:
    """The local copy of `hf://<org>/<repo>[/<subset>]` (downloaded, or from the Hub cache)."""
    parts = uri[len(HUB) :].strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise DataError(f"retrieval_dataset: {uri!r}: expected hf://<org>/<repo>[/<subset>]")
    repo, subset = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import snapshot_download

    files = (_METADATA, "queries.parquet", "corpus.parquet")  # a subset's, and only those
    patterns = [f"{subset or '*'}/{name}" for name in files]
    try:
        root = snapshot_download(repo, repo_type="dataset", allow_patterns=patterns)
    except Exception as exc:  # offline, not found, gated: say which source and why
        raise DataError(
            f"retrieval_dataset: {uri}: could not download dataset {repo!r}"
            f"{f' (subset {subset!r})' if subset else ''}: {type(exc).__name__}: {exc}"
        ) from exc
    folder = Path(root) / subset
    if not folder.is_dir() or not _subsets(folder):
        raise DataError(
            f"retrieval_dataset: {uri}: {repo} has no {subset + '/' if subset else ''}"
            f"{_METADATA}: not a dataset in NeMo AutoModel's retrieval layout"
        )
    return folder


def _read_subsets(path: str, folder: Path, corpora: dict[str, Corpus]) -> list[Row]:
    """The rows of every subset under `folder`, each over its own corpus."""
    rows = []
    for subset in _subsets(folder):
        where = f"{path}/{subset.relative_to(folder)}" if subset != folder else path
        metadata = _json_object(subset / _METADATA, where)
        if metadata.get("ids_only"):
            raise DataError(
                f"retrieval_dataset: {where}: its {_METADATA} says ids_only: the queries and "
                "passages are ids of another dataset, not texts. Their data_preparation.py "
                "(examples/retrieval/bi_encoder/llama_embed_nemotron_8b) writes them out as "
                "<subset>.json with a corpus folder; give that .json file as the source"
            )
        corpus = _register(corpora, metadata, subset / "corpus.parquet", where)
        queries = subset / "queries.parquet"
        if not queries.is_file():
            raise DataError(f"retrieval_dataset: {where}: no queries.parquet in {subset}")
        table = load_rows(queries)
        rows += _table_rows(table, f"retrieval_dataset({where}/queries.parquet)", corpus)
    return rows


def _register(
    corpora: dict[str, Corpus], metadata: dict[str, Any], path: Path, where: str
) -> Corpus:
    """The corpus at `path` under its metadata's `corpus_id` (one path per id)."""
    corpus_id = metadata.get("corpus_id")
    if not isinstance(corpus_id, str | int) or isinstance(corpus_id, bool):
        raise DataError(f"retrieval_dataset: {where}: its metadata has no corpus_id")
    known = corpora.get(str(corpus_id))
    if known is not None:
        if known.where != str(path):
            raise DataError(
                f"retrieval_dataset: {where}: corpus_id {corpus_id!r} names two corpora, "
                f"{known.where} and {path}"
            )
        return known
    if not path.exists():
        raise DataError(f"retrieval_dataset: {where}: corpus {path} not found")
    instructions = tuple(str(metadata.get(k) or "") for k in ("query_instruction", "passage_instruction"))  # fmt: skip
    corpora[str(corpus_id)] = Corpus(load_corpus(path), str(path), instructions)  # type: ignore[arg-type]
    return corpora[str(corpus_id)]


# -- their corpus-id JSON ---------------------------------------------------------------------


def _their_json(path: Path) -> dict[str, Any] | None:
    """A `.json` file's {"corpus", "data"} object (their corpus-id JSON), else None."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    with path.open("rb") as f:
        head = f.read(64).lstrip()
    if not head.startswith(b"{"):
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # JSON lines, or not JSON: a rows file
    return value if isinstance(value, dict) and {"corpus", "data"} <= set(value) else None


def _read_their_json(path: str, data: dict[str, Any], corpora: dict[str, Corpus]) -> list[Row]:
    """Their corpus-id JSON: its corpus folders registered, its rows naming a corpus_id."""
    local = Path(path).expanduser()
    listed = data["corpus"] if isinstance(data["corpus"], list) else [data["corpus"]]
    for item in listed:
        if not isinstance(item, Mapping) or not item.get("path"):
            raise DataError(f"retrieval_dataset: {path}: each 'corpus' entry needs a 'path'")
        # relative to the JSON file's folder, as they resolve it (an absolute path stays)
        folder = Path(os.path.normpath(os.path.join(local.parent.absolute(), str(item["path"]))))
        metadata = _json_object(folder / _MERLIN, path)
        kind = metadata.get("class")
        if kind != "TextQADataset":
            raise DataError(
                f"retrieval_dataset: {path}: corpus {folder} is a {kind!r}; only their text "
                "corpora (class TextQADataset: id and text) are read here"
            )
        _register(corpora, metadata, folder, path)
    rows = data["data"]
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise DataError(f"retrieval_dataset: {path}: 'data' must be a list of rows (objects)")
    table = JsonRows(list(rows))
    source = f"retrieval_dataset({path})"
    if len(table) and "corpus_id" not in table.column_names:
        raise DataError(f"{source}: its rows have no 'corpus_id' (the corpus they name ids of)")
    ids = table["corpus_id"] if len(table) else []
    return [
        Row(source, index, query, positive, negative, str(ids[index]))
        for index, query, positive, negative in query_rows(table, source)
    ]


def _json_object(path: Path, where: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"retrieval_dataset: {where}: {path} not found")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"retrieval_dataset: {where}: {path}: invalid JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise DataError(f"retrieval_dataset: {where}: {path} must hold a JSON object")
    return value


# -- tables of rows and corpora ---------------------------------------------------------------


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
