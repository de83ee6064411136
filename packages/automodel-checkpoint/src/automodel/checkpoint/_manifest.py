"""``checkpoint.json``: what a checkpoint holds, written last, checked before any load."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from ._atomic import atomic_write_text
from ._errors import CheckpointError
from ._weights_format import HF_WEIGHTS, WeightsFormat

MANIFEST_FILE = "checkpoint.json"
FORMAT_VERSION = 1
PARTS = ("model", "optimizer", "optim_states", "train_states")


@dataclass(frozen=True)
class CheckpointInfo:
    """The parsed manifest of one complete checkpoint."""

    path: Path
    format_version: int
    epoch: int
    step: int
    world_size: int
    created: str  # UTC, ISO 8601
    parts: tuple[str, ...]  # the subset of PARTS saved, in that order
    optim_states: tuple[str, ...]  # names of the states saved once under optim/
    train_states: tuple[str, ...]  # names of the states saved per rank under train_state/
    files: Mapping[str, int] = field(default_factory=dict)  # relative POSIX path -> bytes
    weights_format: WeightsFormat = HF_WEIGHTS  # how model/ holds the weights

    @property
    def total_bytes(self) -> int:
        """Bytes of all files of the checkpoint (the manifest excluded)."""
        return sum(self.files.values())

    def describe_parts(self) -> str:
        """A short human description of the saved parts, e.g. "model, optimizer, train_states [rng]"."""
        items = []
        for part in self.parts:
            names = {"optim_states": self.optim_states, "train_states": self.train_states}.get(part)
            items.append(f"{part} [{', '.join(names)}]" if names else part)
        return ", ".join(items) or "nothing"


def list_files(root: Path) -> dict[str, int]:
    """Every regular file under ``root`` as {relative POSIX path: size}, sorted, manifest excluded."""
    out: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel != MANIFEST_FILE:
                out[rel] = path.stat().st_size
    return out


def write_manifest(
    staging: Path,
    *,
    epoch: int,
    step: int,
    world_size: int,
    parts: Sequence[str],
    optim_states: Sequence[str],
    train_states: Sequence[str],
    weights_format: WeightsFormat = HF_WEIGHTS,
) -> dict[str, Any]:
    """Write ``checkpoint.json`` into ``staging`` (listing every file there); return its content."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "epoch": epoch,
        "step": step,
        "world_size": world_size,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "parts": [p for p in PARTS if p in parts],
        "optim_states": list(optim_states),
        "train_states": list(train_states),
        "weights_format": weights_format.to_json(),
        "files": list_files(staging),
    }
    atomic_write_text(staging / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _bad(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint manifest {path} is corrupt: {why}")


def _names(raw: Any, key: str, path: Path) -> tuple[str, ...]:
    value = raw.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(path, f"{key!r} must be a list of strings")
    return tuple(value)


def _safe_rel(rel: str) -> bool:
    """Whether ``rel`` is a relative path that stays inside the checkpoint folder."""
    pure = PurePosixPath(rel)
    return bool(rel) and not pure.is_absolute() and ".." not in pure.parts and "\\" not in rel


def read_checkpoint_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Parse the manifest of the checkpoint folder ``path`` (``epoch_<e>_step_<s>``)."""
    root = Path(path)
    manifest = root / MANIFEST_FILE
    if not manifest.is_file():
        what = "does not exist" if not root.exists() else f"has no {MANIFEST_FILE}"
        raise CheckpointError(f"{root} is not a complete checkpoint: it {what}")
    try:
        raw = json.loads(manifest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(manifest, f"not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise _bad(manifest, "not a JSON object")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{manifest} has format_version {version!r}; this version of automodel.checkpoint "
            f"reads format_version {FORMAT_VERSION}"
        )
    ints = {k: raw.get(k) for k in ("epoch", "step", "world_size")}
    for key, value in ints.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _bad(manifest, f"{key!r} must be a non-negative integer, got {value!r}")
    files = raw.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and _safe_rel(k) and isinstance(v, int) and v >= 0
        for k, v in files.items()
    ):
        raise _bad(manifest, "'files' must map relative paths inside the folder to sizes")
    parts = _names(raw, "parts", manifest)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise _bad(manifest, f"unknown part(s) {unknown}")
    weights_format = HF_WEIGHTS  # manifests written before weights_format existed
    if "weights_format" in raw:
        try:
            weights_format = WeightsFormat.from_json(raw["weights_format"])
        except ValueError as exc:
            raise _bad(manifest, f"'weights_format' is invalid: {exc}") from exc
    return CheckpointInfo(
        path=root,
        format_version=version,
        epoch=ints["epoch"],
        step=ints["step"],
        world_size=ints["world_size"],
        created=str(raw.get("created", "")),
        parts=parts,
        optim_states=_names(raw, "optim_states", manifest),
        train_states=_names(raw, "train_states", manifest),
        files=dict(files),
        weights_format=weights_format,
    )


def verify_files(info: CheckpointInfo, under: str = "") -> None:
    """Raise CheckpointError unless every file listed (below ``under``) has its recorded size."""
    for rel, expected in info.files.items():
        if under and not rel.startswith(under.rstrip("/") + "/"):
            continue
        path = info.path / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(
                f"checkpoint {info.path} is corrupt or truncated: {rel} is missing "
                f"(manifest says {expected} bytes)"
            ) from None
        if size != expected:
            raise CheckpointError(
                f"checkpoint {info.path} is corrupt or truncated: {rel} is {size} bytes, "
                f"manifest says {expected}"
            )
