"""Finding complete checkpoints, choosing the latest, publishing, pruning and cleaning up."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from ._atomic import atomic_write_text, fsync_path, is_temp_path
from ._layout import LATEST_FILE, parse_checkpoint_dir_name
from ._manifest import MANIFEST_FILE

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a published checkpoint folder: right name and a manifest."""
    return parse_checkpoint_dir_name(path.name) is not None and (path / MANIFEST_FILE).is_file()


def _sort_key(path: Path) -> tuple[int, int]:
    epoch, step = parse_checkpoint_dir_name(path.name) or (0, 0)
    return step, epoch


def list_checkpoints(checkpoint_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints under ``checkpoint_dir``, oldest step first."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and is_complete(p)), key=_sort_key)


def _latest_target(root: Path) -> Path | None:
    """The folder named in LATEST, if the file exists and names a plain checkpoint folder."""
    try:
        name = (root / LATEST_FILE).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    if parse_checkpoint_dir_name(name) is None:
        return None
    return root / name


def find_latest(checkpoint_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint: LATEST's target if complete, else the highest step."""
    root = Path(checkpoint_dir)
    target = _latest_target(root)
    if target is not None and target.is_dir() and is_complete(target):
        return target
    found = list_checkpoints(root)
    if found:
        why = (
            f"{LATEST_FILE} names {target.name}, which is not complete"
            if target
            else (f"{LATEST_FILE} is missing or invalid")
        )
        logger.warning("%s in %s; using the highest step instead: %s", why, root, found[-1].name)
        return found[-1]
    return None


def _remove(path: Path) -> None:
    """Delete a folder or file, ignoring one that is already gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(checkpoint_dir: Path) -> None:
    """Delete what an interrupted save or prune left: ``.staging-*``, ``.trash-*``, and the
    temporary file of an atomic write (such as LATEST's) killed before its rename."""
    if not checkpoint_dir.is_dir():
        return
    for path in checkpoint_dir.iterdir():
        if path.name.startswith((STAGING_PREFIX, TRASH_PREFIX)) or is_temp_path(path):
            logger.info("removing leftover %s", path)
            _remove(path)


def _trash_path(path: Path) -> Path:
    return path.with_name(f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")


def delete_checkpoint(path: Path) -> None:
    """Rename to ``.trash-*`` (so it is never half-visible), then delete."""
    trash = _trash_path(path)
    os.replace(path, trash)
    fsync_path(path.parent)
    _remove(trash)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (folders after their contents)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def publish_folder(staging: Path, final: Path, *, synced: bool = False) -> Path:
    """Make the complete folder ``staging`` visible as ``final``, replacing an earlier one.

    ``staging`` is fsynced first (unless ``synced``), so what becomes visible is on disk. An
    earlier ``final`` is renamed to a hidden ``.trash-*`` sibling before the new one takes its
    name and is deleted only after: a kill in between leaves the old folder (under that name)
    and the new one, never neither. A reader never sees a half-written ``final``.
    """
    if not synced:
        fsync_tree(staging)
    trash = None
    if final.exists():
        trash = _trash_path(final)
        os.replace(final, trash)
    os.replace(staging, final)
    fsync_path(final.parent)
    if trash is not None:
        _remove(trash)
    return final


def publish(staging: Path, final: Path) -> None:
    """Rename the complete (fsynced) ``staging`` folder to ``final`` and point LATEST at it."""
    publish_folder(staging, final, synced=True)
    atomic_write_text(final.parent / LATEST_FILE, final.name + "\n")


def set_aside(checkpoint_dir: Path, destination: Path, after_step: int | None = None) -> list[Path]:
    """Move checkpoints out of the way of a new line of training; nothing is deleted.

    Without ``after_step`` the whole folder (leftovers included) becomes ``destination``;
    with it, the complete checkpoints of later steps move into ``destination`` and LATEST
    names the newest that stayed. ``destination`` gets a LATEST of its own, so it can be
    resumed from like any checkpoint folder. Returns the checkpoints moved (old paths).
    """
    found = list_checkpoints(checkpoint_dir)
    if after_step is None:
        if not checkpoint_dir.is_dir() or not any(checkpoint_dir.iterdir()):
            return []
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.rename(checkpoint_dir, destination)  # one rename: never half moved
        fsync_path(checkpoint_dir.parent)
        fsync_path(destination.parent)
        return found
    moved = [p for p in found if _sort_key(p)[0] > after_step]
    if not moved:
        return []
    destination.mkdir(parents=True)
    for path in moved:
        os.rename(path, destination / path.name)
    atomic_write_text(destination / LATEST_FILE, moved[-1].name + "\n")
    kept = list_checkpoints(checkpoint_dir)
    if kept:
        atomic_write_text(checkpoint_dir / LATEST_FILE, kept[-1].name + "\n")
    else:
        (checkpoint_dir / LATEST_FILE).unlink(missing_ok=True)
    fsync_path(checkpoint_dir)
    fsync_path(destination.parent)
    return moved


def prune(checkpoint_dir: Path, keep_last_n: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``keep_last_n`` (never LATEST's target)."""
    if keep_last_n is None:
        return []
    found = list_checkpoints(checkpoint_dir)
    keep = set(found[-keep_last_n:]) if keep_last_n > 0 else set()
    target = _latest_target(checkpoint_dir)
    doomed = [p for p in found if p not in keep and p != target]
    for path in doomed:
        logger.info("deleting old checkpoint %s (keep_last_n=%d)", path, keep_last_n)
        delete_checkpoint(path)
    return doomed
