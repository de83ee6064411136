"""A dataset's fingerprint: cheap to take, kept in the loader's state, compared on resume, so a
resumed run cannot silently continue at the old position in other data."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch.utils.data import IterableDataset

_ROWS = 16  # rows hashed, spread evenly over the dataset


def data_fingerprint(dataset: Any) -> dict[str, Any]:
    """Kind, number of samples and a hash of 16 evenly spread rows (their tokens and text).

    A stream has no length and no random access: its kind and source stand for it.
    """
    kind = type(dataset).__name__
    if isinstance(dataset, IterableDataset):
        return {"kind": kind, "source": str(getattr(dataset, "where", ""))}
    n = len(dataset)
    picks = sorted({round(i * (n - 1) / (_ROWS - 1)) for i in range(_ROWS)}) if n else []
    digest = hashlib.sha256()
    for index in picks:
        row = dataset[index]
        items = sorted(row.items()) if isinstance(row, dict) else [("", row)]
        for key, value in items:
            digest.update(str(key).encode())
            if isinstance(value, torch.Tensor):
                digest.update(value.cpu().contiguous().numpy().tobytes())
            else:  # text, numbers, lists of them; anything else (an image) by its type only
                digest.update(json.dumps(value, default=lambda o: type(o).__name__).encode())
    return {"kind": kind, "samples": n, "rows_sha256": digest.hexdigest()[:16]}


def describe_change(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """What differs between two fingerprints, in words; None when they match."""
    changes = []
    for key, what in (("kind", "dataset class"), ("source", "source"), ("samples", "samples")):
        if saved.get(key) != current.get(key):
            changes.append(f"{what} {saved.get(key)} -> {current.get(key)}")
    if not changes and saved.get("rows_sha256") != current.get("rows_sha256"):
        changes.append("the same number of samples, but their tokens differ")
    return "; ".join(changes) or None
