"""Worker of conftest.py's `pooled_layouts`, run by torchrun: several runs of one recipe in turn.

``layouts_worker.py SPEC``: SPEC is a JSON file ``{"recipe": "finetune.llm", "out": DIR,
"runs": {name: argv}}``. Each run calls the recipe's entry point (found as the CLI finds it)
with its argv, in a process group of its own, as a launch of its own would: the recipe ends
the group, and the next run starts a new one (on a new store: torchrun's cannot be joined
twice). Each rank's stderr of a run goes to ``DIR/<name>.rank<r>.log`` and its exit status to
``DIR/<name>.rank<r>.exit``. The first run that fails ends the launch with its status, its log
tail on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path

import torch.distributed as dist
from _shared import REPO

from automodel.cli._exit import exit_process


def run_logged(recipe, argv: list[str], log: Path) -> int:
    """`recipe(argv)`'s exit status, with this process's stderr (fd 2) going to `log`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with log.open("w") as stream:
        os.dup2(stream.fileno(), 2)
        try:
            return recipe(argv) or 0
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            return 1
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out"])
    (entry,) = entry_points(group="automodel.recipes", name=spec["recipe"])
    recipe = entry.load()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    os.chdir(REPO)  # the example configs' paths are relative to it, as for the CLI
    for name, argv in spec["runs"].items():
        store = dist.FileStore(str(out / f"{name}.store"), world)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
        log = out / f"{name}.rank{rank}.log"
        status = run_logged(recipe, argv, log)
        (out / f"{name}.rank{rank}.exit").write_text(str(status))
        if status != 0:
            print(f"rank {rank}: run {name} failed (exit {status}):\n{log.read_text()[-4000:]}")
            exit_process(status)
    exit_process(0)


if __name__ == "__main__":
    main()
