"""NeMo AutoModel's retrieval layouts: its Hub layout of subsets (a folder, or `hf://` on the
Hub) and its corpus-id JSON; each read into rows over corpora registered by their ids."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._errors import DataError
from ._loading import JsonRows, load_rows
from ._retrieval_tables import Corpus, Row, load_corpus, query_rows, table_rows

HUB = "hf://"
METADATA = "dataset_metadata.json"
MERLIN = "merlin_metadata.json"


# -- their Hub layout -----------------------------------------------------------------------


def subsets(folder: Path) -> list[Path]:
    """The subset folders of `folder` in their Hub layout (itself, if it is one), sorted."""
    if (folder / METADATA).is_file():
        return [folder]
    return sorted(p.parent for p in folder.glob(f"**/{METADATA}"))


def download(uri: str) -> Path:
    """The local copy of `hf://<org>/<repo>[/<subset>]` (downloaded, or from the Hub cache)."""
    parts = uri[len(HUB) :].strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise DataError(f"retrieval_dataset: {uri!r}: expected hf://<org>/<repo>[/<subset>]")
    repo, subset = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import snapshot_download

    files = (METADATA, "queries.parquet", "corpus.parquet")  # a subset's, and only those
    patterns = [f"{subset or '*'}/{name}" for name in files]
    try:
        root = snapshot_download(repo, repo_type="dataset", allow_patterns=patterns)
    except Exception as exc:  # offline, not found, gated: say which source and why
        raise DataError(
            f"retrieval_dataset: {uri}: could not download dataset {repo!r}"
            f"{f' (subset {subset!r})' if subset else ''}: {type(exc).__name__}: {exc}"
        ) from exc
    folder = Path(root) / subset
    if not folder.is_dir() or not subsets(folder):
        raise DataError(
            f"retrieval_dataset: {uri}: {repo} has no {subset + '/' if subset else ''}"
            f"{METADATA}: not a dataset in NeMo AutoModel's retrieval layout"
        )
    return folder


def read_subsets(path: str, folder: Path, corpora: dict[str, Corpus]) -> list[Row]:
    """The rows of every subset under `folder`, each over its own corpus."""
    rows = []
    for subset in subsets(folder):
        where = f"{path}/{subset.relative_to(folder)}" if subset != folder else path
        metadata = _json_object(subset / METADATA, where)
        if metadata.get("ids_only"):
            raise DataError(
                f"retrieval_dataset: {where}: its {METADATA} says ids_only: the queries and "
                "passages are ids of another dataset, not texts. Their data_preparation.py "
                "(examples/retrieval/bi_encoder/llama_embed_nemotron_8b) writes them out as "
                "<subset>.json with a corpus folder; give that .json file as the source"
            )
        corpus = _register(corpora, metadata, subset / "corpus.parquet", where)
        queries = subset / "queries.parquet"
        if not queries.is_file():
            raise DataError(f"retrieval_dataset: {where}: no queries.parquet in {subset}")
        table = load_rows(queries)
        rows += table_rows(table, f"retrieval_dataset({where}/queries.parquet)", corpus)
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


def their_json(path: Path) -> dict[str, Any] | None:
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


def read_their_json(path: str, data: dict[str, Any], corpora: dict[str, Corpus]) -> list[Row]:
    """Their corpus-id JSON: its corpus folders registered, its rows naming a corpus_id."""
    local = Path(path).expanduser()
    listed = data["corpus"] if isinstance(data["corpus"], list) else [data["corpus"]]
    for item in listed:
        if not isinstance(item, Mapping) or not item.get("path"):
            raise DataError(f"retrieval_dataset: {path}: each 'corpus' entry needs a 'path'")
        # relative to the JSON file's folder, as they resolve it (an absolute path stays)
        folder = Path(os.path.normpath(os.path.join(local.parent.absolute(), str(item["path"]))))
        metadata = _json_object(folder / MERLIN, path)
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
