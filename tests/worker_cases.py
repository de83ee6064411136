"""The end every torchrun check worker shares: run named cases, write this rank's JSON, tear down.

Worker scripts import it as `worker_cases` (run_torchrun in conftest.py puts tests/ on their
PYTHONPATH); the tests read the files with `worker_results` / `worker_case`.
"""

from __future__ import annotations

import gc
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist


def run_cases(cases: dict[str, Callable[[], dict]], out: Path) -> None:
    """Run every case (a traceback is its result if it raises), write `out/rank<r>.json`, and
    end the process group once every rank is done (garbage first: gloo can abort at exit)."""
    rank = dist.get_rank()
    result: dict = {"rank": rank}
    for name, case in cases.items():
        try:
            result[name] = case()
        except Exception:
            result[name] = {"error": traceback.format_exc()}
            print(f"rank {rank} {name}: {result[name]}", file=sys.stderr, flush=True)
        gc.collect()
    (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1))
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
