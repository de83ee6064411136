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

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import DataError
from ._loading import load_rows
from ._retrieval_layouts import HUB, download, read_subsets, read_their_json, subsets, their_json
from ._retrieval_tables import Corpus, Row, corpus_file, table_rows

logger = logging.getLogger(__name__)

_ENTRY_KEYS = ("path", "corpus", "num_samples")


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
        return table_rows(rows, source, corpus_file(entry.corpus))
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
    if local.is_dir() and subsets(local):
        return "layout", local
    data = their_json(local)
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
        return read_subsets(entry.path, download(entry.path), corpora)
    if entry.kind == "layout":
        return read_subsets(entry.path, entry.found, corpora)
    if entry.kind == "their_json":
        return read_their_json(entry.path, entry.found, corpora)
    rows = load_rows(entry.path, split, name=name)
    source = f"retrieval_dataset({entry.path}, split={split})"
    return table_rows(rows, source, corpus_file(entry.corpus))
