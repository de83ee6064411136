"""One GPU check: the CUDA tests and the GPU figures of the benchmarks, in one call, in < 8 min.

On the lent GPU machine, through benchmarks/gpu_suite.sh (which first installs what is missing):

    bash benchmarks/gpu_suite.sh                       # writes $OUT/gpu_suite.json and a table

Here, the same wiring on CPU at tiny shapes (tests/benchmarks/test_gpu_suite.py runs it):

    uv run python benchmarks/gpu_suite.py --smoke
    uv run python benchmarks/gpu_suite.py --smoke --only llm_1b lora_8b

The first lines say where it runs and check the installed versions against our requirements
(_gpu_env.py). Then each item runs in its own process with a time limit (under --smoke, in this
process, except cuda_tests, which runs as on a GPU), and whatever an item raises is recorded as
its failure: one failing item loses no other's results. The JSON report is rewritten after every
item, so a run stopped from outside keeps what it measured; the table at the end has one line
per figure, with its target where the issue gives one. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _gpu_env
import _gpu_items
import _gpu_llm
from _gpu_common import Context, NeedsCuda, show

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Item:
    """One part of the suite: what it is, its time limit on a GPU, and the function that runs it."""

    name: str
    budget_s: float
    run: Callable[[Context], dict[str, Any]]
    what: str


ITEMS = (
    Item("cuda_tests", 150, _gpu_items.cuda_tests, "the CUDA-only tests, resume bitwise on CUDA"),
    Item("llm_1b", 120, _gpu_llm.llm_1b, "1B full FT: ours vs transformers.Trainer"),
    Item("lora_8b", 75, _gpu_llm.lora_8b, "8B LoRA: tokens/s, TFLOP/s"),
    Item("loss_memory", 30, _gpu_items.loss_memory_item, "fused vs masked CE peak memory"),
    Item("moe_layer", 30, _gpu_items.moe_layer_item, "MoE layer vs transformers' experts"),
    Item("lora_triton", 35, _gpu_items.lora_triton_item, "Triton LoRA kernel vs plain LoRA"),
)
BY_NAME = {item.name: item for item in ITEMS}
TOTAL_BUDGET_S = 450  # the items' limits add up to 440; with the install, under 8 minutes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (the --item ones start one item's process)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes: checks the wiring")
    p.add_argument("--out", type=Path, default=REPO / "runs/gpu_suite/gpu_suite.json")
    p.add_argument("--work", type=Path, help="the items' files (default: beside --out)")
    p.add_argument("--only", nargs="+", choices=list(BY_NAME), help="run these items only")
    p.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S, help="all items together")
    p.add_argument("--item", choices=list(BY_NAME), help=argparse.SUPPRESS)
    p.add_argument("--item-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_here(item: Item, ctx: Context) -> dict[str, Any]:
    """Run `item` in this process; its result, or what it raised."""
    try:
        result = item.run(ctx)
        result = {"status": "partial" if result.get("errors") else "ok", **result}
        for fig in result["rows"] if ctx.smoke else []:
            fig["met"] = None  # tiny shapes on CPU: no figure says anything
        return result
    except NeedsCuda as e:
        return {"status": "needs_cuda" if ctx.smoke else "failed", "error": str(e)}
    except Exception as e:  # one item's failure is recorded, never the suite's end
        return {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": _tail(e)}


def _tail(e: BaseException) -> str:
    """The end of an exception's traceback."""
    return "".join(traceback.format_exception(e))[-4000:]


def run_isolated(item: Item, ctx: Context, seconds: float) -> dict[str, Any]:
    """Run `item` in a child process of this script, stopped after `seconds`."""
    result_path, log = ctx.work / f"{item.name}.result.json", ctx.work / f"{item.name}.log"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--item", item.name, "--item-out", str(result_path)]
    cmd += ["--work", str(ctx.work), "--seconds", str(seconds), *(["--smoke"] if ctx.smoke else [])]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as f:  # a session of its own: a stop ends its pytest or loss children too
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            code = proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    if result_path.exists():
        return json.loads(result_path.read_text())
    status = "timeout" if code is None else "failed"
    error = f"stopped after {seconds:.0f} s" if code is None else f"its process exited {code}"
    return {"status": status, "error": error, "log_tail": log.read_text()[-4000:]}


def item_main(args: argparse.Namespace) -> int:
    """In an item's own process: run it and write its result for `run_isolated`."""
    ctx = Context(args.smoke, args.work, time.monotonic() + args.seconds)
    result = run_here(BY_NAME[args.item], ctx)
    args.item_out.write_text(json.dumps(result, indent=1, default=str))
    return 0


def table(items: dict[str, dict[str, Any]]) -> str:
    """The results as a markdown table: one line per figure, then each failure's reason (an item
    `partial` when some of its runs failed, `failed`, `timeout`, `skipped`, `needs_cuda`)."""
    lines = ["| item | figure | value | target | met |", "|---|---|---|---|---|"]
    for name, r in items.items():
        if r["status"] != "ok":
            lines.append(f"| {name} | **{r['status']}** ({r['seconds']:.0f} s) | - | - | - |")
        for fig in r.get("rows", []):
            met = {True: "yes", False: "**no**", None: ""}[fig["met"]]
            value = show(fig["value"], fig["unit"])
            lines.append(f"| {name} | {fig['figure']} | {value} | {fig['target'] or ''} | {met} |")
    errors = [
        f"{n}: {error}".splitlines()[0]
        for n, r in items.items()
        for error in ([r["error"]] if "error" in r else r.get("errors", []))
    ]
    return "\n".join([*lines, "", *errors])


def main(argv: list[str] | None = None) -> int:
    """Check the environment, run every item within the budget, write the report, print the table."""
    args = parse_args(argv)
    args.work = (args.work or args.out.parent / "work").resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.item:
        return item_main(args)
    started = time.monotonic()
    machine = _gpu_env.machine()
    _gpu_env.print_machine(machine)
    rows = _gpu_env.check_requirements()
    problems = _gpu_env.print_requirements(rows)
    if not args.smoke and not machine["cuda_available"]:
        print("error: no CUDA device; --smoke runs the wiring on CPU", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/gpu_suite.py", *(sys.argv[1:] if argv is None else argv)]),
        "smoke": args.smoke,
        "machine": machine,
        "requirement_problems": problems,
        "requirements": rows,
        "items": {},
    }
    deadline = started + args.budget_s
    chosen = [item for item in ITEMS if not args.only or item.name in args.only]
    for i, item in enumerate(chosen, 1):
        seconds = min(item.budget_s, deadline - time.monotonic())
        print(f"\n[{i}/{len(chosen)}] {item.name}: {item.what} (limit {seconds:.0f} s)", flush=True)
        t0 = time.monotonic()
        if seconds < 10:
            result = {"status": "skipped", "error": "the suite's time budget was spent"}
        elif args.smoke and item.name != "cuda_tests":  # quicker; cuda_tests checks the path
            result = run_here(item, Context(True, args.work, t0 + seconds))
        else:
            result = run_isolated(item, Context(args.smoke, args.work, t0 + seconds), seconds)
        result["seconds"], result["limit_s"] = time.monotonic() - t0, seconds
        report["items"][item.name] = result
        report["total_seconds"] = time.monotonic() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"[{i}/{len(chosen)}] {item.name}: {result['status']} in {result['seconds']:.0f} s")
    print(f"\nGPU suite, {machine.get('gpu', 'CPU smoke')}, {report['total_seconds']:.0f} s:")
    print(table(report["items"]))
    print(f"report: {args.out}")
    bad = [n for n, r in report["items"].items() if r["status"] not in ("ok", "needs_cuda")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
