"""Distributed recipe for the CLI tests (imports torch at module level, on purpose)."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import yaml


def main(argv: list[str]) -> int:
    """All-reduce the ranks over gloo and write one JSON file per rank to output.dir."""
    config = yaml.safe_load(Path(argv[argv.index("-c") + 1]).read_text())
    out = Path(config["output"]["dir"])
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    total = torch.tensor([rank])
    dist.all_reduce(total)
    record = {
        "rank": rank,
        "world_size": world_size,
        "sum": int(total.item()),
        "argv": argv,
        "local_rank": os.environ.get("LOCAL_RANK"),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    gc.collect()
    dist.destroy_process_group()
    return 0
