"""``python -m automodel.checkpoint``: consolidate and inspect checkpoints offline."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._errors import CheckpointError
from ._layout import MODEL_DIR, is_weight_file_name
from ._manifest import MANIFEST_FILE, read_checkpoint_info, verify_files
from ._model_state import model_dir_has_weights, read_model_header
from ._retention import find_latest, publish_folder
from ._safetensors_io import load_consolidated, save_consolidated
from ._sizes import parse_size
from ._train_state import rank_file_name
from ._weights_format import HF_WEIGHTS, PEFT_ADAPTER, WeightsFormat

_KNOWN_STEMS = (HF_WEIGHTS.file_stem, PEFT_ADAPTER.file_stem)  # for folders without a manifest


class _UsageError(Exception):
    """A mistake in the command line: exit code 2."""


def _bare_stem(model_dir: Path) -> str | None:
    """The file stem of the weights in a folder without a manifest (model, then adapter)."""
    return next((s for s in _KNOWN_STEMS if model_dir_has_weights(model_dir, s)), None)


def _resolve(path: str) -> tuple[Path | None, Path, WeightsFormat]:
    """(checkpoint folder or None, model folder, how weights are stored) for a checkpoint, its
    model/ or a root: the manifest's format, or for a bare folder the file stem found there."""
    p = Path(path)
    if not p.exists():
        raise _UsageError(f"{p} does not exist")
    checkpoint = None
    if (p / MANIFEST_FILE).is_file():
        checkpoint = p
    elif p.name == MODEL_DIR and (p.parent / MANIFEST_FILE).is_file():
        checkpoint = p.parent
    else:
        stem = _bare_stem(p)
        if stem is not None:
            return None, p, WeightsFormat(file_stem=stem)
        checkpoint = find_latest(p) if p.is_dir() else None
    if checkpoint is not None:
        info = read_checkpoint_info(checkpoint)
        return checkpoint, checkpoint / MODEL_DIR, info.weights_format
    raise _UsageError(
        f"{p} is not a complete checkpoint (no {MANIFEST_FILE}), a model folder with "
        f"safetensors weights, or a checkpoint directory holding complete checkpoints"
    )


def _human(n: int) -> str:
    """Bytes as a short string: 1.5 GB, 12.0 KB, 7 B."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def consolidate(src: str, dst: str, max_shard_size: str) -> Path:
    """Write the model of ``src`` as a Hugging Face folder ``dst`` (staged, then renamed).

    A PEFT adapter checkpoint gives a PEFT adapter folder (the weight files keep their stem
    and key names; nothing is merged into a base model).
    """
    limit = parse_size(max_shard_size)
    checkpoint, model_dir, fmt = _resolve(src)
    stem = fmt.file_stem
    if checkpoint is not None:
        verify_files(read_checkpoint_info(checkpoint), under=MODEL_DIR)
    for folder in fmt.folders:
        if not model_dir_has_weights(model_dir / folder, stem):
            raise CheckpointError(f"{model_dir / folder} holds no model weights")
    out = Path(dst)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise _UsageError(f"refusing to overwrite {out}: it exists and is not an empty folder")
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for folder in fmt.folders:
            save_consolidated(
                load_consolidated(model_dir / folder, file_stem=stem),
                staging / folder,
                max_shard_size=limit,
                write=True,
                file_stem=stem,
            )
        weight_dirs = {Path(folder) for folder in fmt.folders}
        for path in sorted(model_dir.rglob("*")):
            rel = path.relative_to(model_dir)
            weights = rel.parent in weight_dirs and is_weight_file_name(path.name, stem)
            if path.is_file() and not weights:
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, staging / rel)
        if out.exists():
            out.rmdir()  # the empty folder asked for (a full one was refused above)
        publish_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _part_sizes(files: dict[str, int]) -> dict[str, tuple[int, int]]:
    """{top-level entry: (bytes, file count)}."""
    out: dict[str, tuple[int, int]] = {}
    for rel, size in files.items():
        top = rel.split("/", 1)[0]
        total, count = out.get(top, (0, 0))
        out[top] = (total + size, count + 1)
    return out


def inspect(path: str, *, tensors: bool) -> dict[str, Any]:
    """Everything ``inspect`` reports, as a JSON-able dict (``problems`` lists what is wrong)."""
    checkpoint, model_dir, fmt = _resolve(path)
    stem = fmt.file_stem
    report: dict[str, Any] = {"path": str(checkpoint or model_dir), "problems": []}
    if checkpoint is not None:
        info = read_checkpoint_info(checkpoint)
        try:
            verify_files(info)
        except CheckpointError as exc:
            report["problems"].append(str(exc))
        ranks = {
            str(r): list(info.train_states)
            for r in range(info.world_size)
            if f"train_state/{rank_file_name(r)}" in info.files
        }
        report.update(
            epoch=info.epoch,
            step=info.step,
            world_size=info.world_size,
            created=info.created,
            format_version=info.format_version,
            weights_format={
                **info.weights_format.to_json(),
                "name": info.weights_format.name,
                "description": info.weights_format.describe(),
            },
            total_bytes=info.total_bytes,
            parts={k: {"bytes": b, "files": n} for k, (b, n) in _part_sizes(info.files).items()},
            resume={
                "model": "model" in info.parts,
                "optimizer": "optimizer" in info.parts,
                "optim_states": list(info.optim_states),
                "train_states": ranks,
            },
        )
    if all(model_dir_has_weights(model_dir / folder, stem) for folder in fmt.folders):
        try:
            header = {  # names as saved (key prefix kept), each part's under its folder
                fmt.model_name(folder, name): h
                for folder in fmt.folders
                for name, h in read_model_header(model_dir / folder, stem).items()
            }
        except CheckpointError as exc:
            report["problems"].append(str(exc))
        else:
            report["model"] = {
                "file_stem": stem,
                "tensors": len(header),
                "parameters": sum(h.numel for h in header.values()),
                "dtypes": dict(Counter(h.dtype for h in header.values())),
            }
            if tensors:
                report["model"]["tensor_list"] = [
                    {"name": n, "dtype": h.dtype, "shape": list(h.shape), "file": h.file}
                    for n, h in header.items()
                ]
    return report


def _print_report(report: dict[str, Any]) -> None:
    """The human-readable form of :func:`inspect`'s report."""
    print(f"checkpoint    {report['path']}")
    if "epoch" in report:
        print(
            f"saved         epoch {report['epoch']}, step {report['step']}, "
            f"world size {report['world_size']}, {report['created']} "
            f"(format {report['format_version']})"
        )
        if report["resume"]["model"]:
            print(f"model format  {report['weights_format']['description']}")
        print(f"size          {_human(report['total_bytes'])}")
        for part, entry in report["parts"].items():
            print(f"  {part:<12}{_human(entry['bytes']):>10}  ({entry['files']} files)")
    model = report.get("model")
    if model:
        dtypes = ", ".join(f"{d} x{n}" for d, n in model["dtypes"].items())
        print(
            f"weights       {model['tensors']} tensors, {model['parameters']:,} parameters, {dtypes}"
        )
        for t in model.get("tensor_list", []):
            print(f"  {t['name']:<60} {t['dtype']:<5} {t['shape']}")
    resume = report.get("resume")
    if resume:
        can = [p for p in ("model", "optimizer") if resume[p]]
        if resume["optim_states"]:
            can.append(f"optim_states [{', '.join(resume['optim_states'])}]")
        print(f"can resume    {', '.join(can) or 'nothing'}")
        for rank, names in resume["train_states"].items():
            print(f"  train_states rank {rank}: {', '.join(names)}")
    for problem in report["problems"]:
        print(f"PROBLEM       {problem}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m automodel.checkpoint", description="Offline checkpoint tools."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cons = sub.add_parser("consolidate", help="write a checkpoint's model as one HF folder")
    cons.add_argument("src", help="checkpoint folder, its model/ folder, or a checkpoint_dir")
    cons.add_argument("dst", help="new (or empty) output folder")
    cons.add_argument("--max-shard-size", default="5GB", help="e.g. 5GB, 500MB (default 5GB)")
    insp = sub.add_parser("inspect", help="describe a checkpoint without loading tensor data")
    insp.add_argument("path", help="checkpoint folder, its model/ folder, or a checkpoint_dir")
    insp.add_argument("--tensors", action="store_true", help="list every tensor")
    insp.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 bad checkpoint, 2 user mistake)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "consolidate":
            out = consolidate(args.src, args.dst, args.max_shard_size)
            print(f"wrote {out}")
            return 0
        report = inspect(args.path, tensors=args.tensors)
    except (_UsageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 1 if report["problems"] else 0
