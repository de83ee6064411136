"""A recipe against the transformers `Trainer` on CPU, shared by finetune_vs_hf_trainer.py and
vlm_vs_hf_trainer.py: each configuration run in its own subprocess (so `ru_maxrss` is per run),
runs alternated and repeated, step ends timed on both sides (a `TrainerCallback`; a listener on
the recipe's telemetry), the rates of what a script counts per step (`Measure`), the results
table and the JSON report.

A script defines its own model, data and batches (`child_hf` builds them and hands them to
`train_with_trainer`; `child_ours` builds the recipe's config for `run_recipe`) and what it
counts; a run's result is the JSON that `child_result` makes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Measure:
    """What a script counts per optimizer step, and how its rates are named and printed."""

    rate: str  # result keys f"{rate}_per_s", f"{rate}_per_s_step_only", ..._median_step
    counted: str  # result keys f"step_{counted}" (one count per step) and f"timed_{counted}"
    label: str  # in the repeats line: f"end-to-end {label}/s of every repeat ..."
    short: str  # table heads: f"{short}/s e2e"
    digits: int  # decimals of a rate in the table and the repeats line
    progress: str  # the rate in the line after each run, str.format()-ed with its result

    @property
    def rates(self) -> tuple[str, str, str]:
        return (
            f"{self.rate}_per_s",
            f"{self.rate}_per_s_step_only",
            f"{self.rate}_per_s_median_step",
        )


# --------------------------------------------------------------------------------------------
# children
# --------------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class CountingCollate:
    """Wraps a collate function; records the rows and the real (non-padding) tokens of every
    batch it builds, in order: the attention-mask sum, or where a batch has no mask (packed
    rows), its ids other than `pad_token_id`."""

    def __init__(self, fn, pad_token_id: int | None = None):
        self.fn = fn
        self.pad_token_id = pad_token_id
        self.rows: list[int] = []
        self.tokens: list[int] = []
        self.seconds = 0.0

    def __call__(self, samples):
        start = time.perf_counter()
        batch = self.fn(samples)
        self.seconds += time.perf_counter() - start
        self.rows.append(int(batch["input_ids"].shape[0]))
        if "attention_mask" in batch:
            self.tokens.append(int(batch["attention_mask"].sum()))
        else:
            self.tokens.append(int((batch["input_ids"] != self.pad_token_id).sum()))
        return batch


def per_step(counts: list[int], grad_acc: int, steps: int) -> list[int]:
    """Batches are consumed in the order they were collated (prefetching only adds to the tail)."""
    return [sum(counts[i * grad_acc : (i + 1) * grad_acc]) for i in range(steps)]


def summarise(
    spec: dict,
    measure: Measure,
    step_counts: list[int],
    step_ends: list[float],
    step_secs: list[float],
) -> dict:
    w = max(1, spec["warmup_steps_excluded"])  # timing starts at the end of step w
    n = len(step_ends)
    if n <= w:
        raise SystemExit(f"only {n} steps ran; need more than --timing-warmup={w}")
    counted = sum(step_counts[w:n])
    wall = step_ends[n - 1] - step_ends[w - 1]
    e2e, step_only, median_step = measure.rates
    return {
        "timed_steps": n - w,
        f"timed_{measure.counted}": counted,
        "timed_wall_s": wall,
        e2e: counted / wall,
        step_only: counted / sum(step_secs[w:n]),
        "mean_step_s": wall / (n - w),
        # robust to bursts of load from other processes: the median step's own rate
        median_step: statistics.median(
            c / s for c, s in zip(step_counts[w:n], step_secs[w:n], strict=True)
        ),
    }


def child_result(
    spec: dict,
    measure: Measure,
    head: dict,
    per_step: dict[str, list],
    step_ends: list[float],
    tail: dict | None = None,
) -> dict:
    """A run's result: `head`, its steps, its per-step lists (`losses`, ..., `step_s`), the
    rates of `measure` over them, its peak RSS and threads, then `tail`."""
    import torch

    step_secs = per_step["step_s"]
    return {
        **head,
        "steps": len(step_secs),
        **per_step,
        **summarise(spec, measure, per_step[f"step_{measure.counted}"], step_ends, step_secs),
        "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
        **(tail or {}),
    }


@dataclass
class TrainerRun:
    """What `train_with_trainer` measured: step ends and step-only seconds (`on_step_begin` ->
    `on_step_end`) and the logged losses."""

    trainer: Any
    grad_acc: int
    head: dict  # transformers version, setup_s, loop_s, collate_s
    ends: list[float] = field(default_factory=list)
    secs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def per_step(self, counts: list[int]) -> list[int]:
        """`counts` of the collated batches summed per optimizer step."""
        return per_step(counts, self.grad_acc, len(self.ends))

    def result(self, spec: dict, measure: Measure, head: dict | None = None, **step_counts) -> dict:
        per_step = {"losses": self.losses, **step_counts, "step_s": self.secs}
        return child_result(spec, measure, {**self.head, **(head or {})}, per_step, self.ends)


def step_timer(run: TrainerRun, sync: Callable[[], None] | None = None):
    """A `TrainerCallback` (for the transformers `Trainer` or a subclass) that appends each step's
    end and step-only seconds (`on_step_begin` -> `on_step_end`) and each logged loss to `run`;
    `sync` (e.g. `torch.cuda.synchronize`) runs before each clock reading, so that on a GPU a
    step's time is its own, as the benchmark recipe times its steps."""
    from transformers import TrainerCallback

    wait = sync or (lambda: None)

    class Timer(TrainerCallback):
        def __init__(self):
            self.begin: float | None = None

        def on_step_begin(self, args, state, control, **kwargs):
            wait()
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            wait()
            now = time.perf_counter()
            run.ends.append(now)
            run.secs.append(now - self.begin)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                run.losses.append(float(logs["loss"]))

    return Timer()


def train_with_trainer(
    spec: dict,
    model,
    dataset,
    counter: CountingCollate,
    started: float,
    prefix: str,
    sync: Callable[[], None] | None = None,
    **training_args,
) -> TrainerRun:
    """Train `model` with the transformers `Trainer` on `dataset` in order, batches made by
    `counter`, with the optimizer and LR schedule built by automodel (`spec["hp"]`); `started`
    is when the child began building (its setup time runs from there). `training_args` add to
    or replace the `TrainingArguments` below (CPU, float32 by default); `sync`: see
    `step_timer`."""
    import transformers
    from transformers import Trainer, TrainingArguments

    from automodel.core.optim import WarmupDecayLR, build_optimizer

    hp = spec["hp"]
    optimizer = build_optimizer(
        model,
        {
            "_target_": "torch.optim.AdamW",
            "lr": hp["lr"],
            "betas": hp["betas"],
            "weight_decay": hp["weight_decay"],
        },
    )
    scheduler = WarmupDecayLR(
        optimizer,
        total_steps=spec["steps"],
        warmup_steps=hp["warmup_steps"],
        style=hp["style"],
        min_lr=hp["min_lr"],
    )
    run = TrainerRun(trainer=None, grad_acc=spec["grad_acc"], head={})
    defaults = dict(
        output_dir=tempfile.mkdtemp(prefix=prefix),
        use_cpu=True,
        report_to=[],
        dataloader_num_workers=0,  # as the recipe's loader (dataloader.num_workers default)
        dataloader_drop_last=True,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=spec["local_batch"],
        gradient_accumulation_steps=spec["grad_acc"],
        max_steps=spec["steps"],
        learning_rate=hp["lr"],
        adam_beta1=hp["betas"][0],
        adam_beta2=hp["betas"][1],
        weight_decay=hp["weight_decay"],
        warmup_steps=hp["warmup_steps"],
        max_grad_norm=hp["max_grad_norm"],
        train_sampling_strategy="sequential",
        seed=spec["seed"],
        bf16=False,
        fp16=False,
    )
    run.trainer = Trainer(
        model=model,
        args=TrainingArguments(**{**defaults, **training_args}),
        train_dataset=dataset,
        data_collator=counter,
        optimizers=(optimizer, scheduler),
        callbacks=[step_timer(run, sync)],
    )
    setup_s = time.perf_counter() - started
    start = time.perf_counter()
    run.trainer.train()
    loop_s = time.perf_counter() - start
    run.head = {
        "transformers": transformers.__version__,
        "setup_s": setup_s,
        "loop_s": loop_s,
        "collate_s": counter.seconds,
    }
    return run


def recipe_config(
    spec: dict, run_dir: Path, *, model_target: str, local_batch: int, data: dict
) -> dict:
    """A recipe's config with the benchmark's steps and hyper-parameters: the model
    `model_target(config=spec["model_config"], seed=spec["seed"])`, the `data` sections
    (tokenizer or processor, dataset), no validation, no checkpoint, no shuffling."""
    hp = spec["hp"]
    return {
        "step_scheduler": {
            "global_batch_size": local_batch * spec["grad_acc"],
            "local_batch_size": local_batch,
            "max_steps": spec["steps"],
            "num_epochs": None,
            "val_every_steps": None,
            "ckpt_every_steps": None,
            "log_every_steps": 1,
        },
        "model": {"_target_": model_target, "config": spec["model_config"], "seed": spec["seed"]},
        **data,
        "dataloader": {"shuffle": False},
        "loss_fn": {"_target_": "automodel.core.losses.MaskedCrossEntropy"},
        "optimizer": {
            "_target_": "torch.optim.AdamW",
            "lr": hp["lr"],
            "betas": list(hp["betas"]),
            "weight_decay": hp["weight_decay"],
        },
        "lr_scheduler": {
            "warmup_steps": hp["warmup_steps"],
            "style": hp["style"],
            "min_lr": hp["min_lr"],
        },
        "clip_grad_norm": {"max_norm": hp["max_grad_norm"]},
        "checkpoint": {"checkpoint_dir": str(run_dir / "checkpoints"), "save_final": False},
        "rng": {"seed": spec["seed"]},
        "distributed": {"device": "cpu"},
        "logging": {"run_dir": str(run_dir), "progress": False},
    }


@dataclass
class RecipeRun:
    """What `run_recipe` measured: step ends (from the telemetry) and training.jsonl's rows."""

    recipe: Any
    cfg: Any
    run_dir: Path
    setup_s: float
    loop_s: float
    ends: list[float]
    rows: list[dict]

    def result(self, spec: dict, measure: Measure, **step_counts) -> dict:
        step_tokens = [r["num_real_tokens"] for r in self.rows]  # every rank's, of the step
        # the recipe's tps covers forward/backward/clip/optimizer; recover its window per step
        step_secs = [t / r["tps"] for t, r in zip(step_tokens, self.rows, strict=True)]
        per_step = {
            "losses": [r["loss"] for r in self.rows],
            "recipe_tps": [r["tps"] for r in self.rows],
            **step_counts,
            "step_real_tokens": step_tokens,
            "step_s": step_secs,
        }
        tail = {
            "local_batch": self.cfg.get("step_scheduler.local_batch_size"),
            "run_dir": str(self.run_dir),
        }
        return child_result(
            spec,
            measure,
            {"setup_s": self.setup_s, "loop_s": self.loop_s},
            per_step,
            self.ends,
            tail,
        )


def run_recipe(recipe_cls, sections, config: dict, run_dir: Path) -> RecipeRun:
    """`recipe_cls(config)`: setup(), then run_train_validation_loop(), as the CLI runs it."""
    import yaml

    from automodel.core.config import load_config, validate_config

    cfg_path = run_dir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))

    t0 = time.perf_counter()
    cfg = load_config(cfg_path)
    validate_config(cfg, sections)
    recipe = recipe_cls(cfg)
    recipe.setup()
    setup_s = time.perf_counter() - t0

    # the end of each step, through the telemetry's public listeners (no patching)
    ends: list[float] = []
    recipe.telemetry.listeners.append(lambda sample: ends.append(time.perf_counter()))

    start = time.perf_counter()
    recipe.run_train_validation_loop()
    loop_s = time.perf_counter() - start

    rows = [json.loads(line) for line in (run_dir / "training.jsonl").read_text().splitlines()]
    return RecipeRun(recipe, cfg, run_dir, setup_s, loop_s, ends, rows)


def child_main(args: argparse.Namespace, children: dict[str, Callable[[dict], dict]]) -> int:
    """The child process: run `children[args.child]` on the spec, write its result."""
    import torch

    spec = json.loads(Path(args.spec).read_text())
    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    result = children[args.child](spec)
    Path(args.result).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------------


def parser(doc: str, runs: tuple[str, ...], *, steps: int) -> argparse.ArgumentParser:
    """The parser with the options that come first in both scripts (which runs, how long)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps per run")
    p.add_argument("--runs", nargs="+", choices=runs, default=list(runs))
    p.add_argument("--timing-warmup", type=int, default=5, help="first steps left out of timing")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats; best is reported")
    return p


def add_batch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--local-batch", type=int, default=16)


def add_optimizer_args(
    p: argparse.ArgumentParser, *, lr: float, lr_warmup: int, min_lr: float
) -> None:
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.98))
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--lr-warmup", type=int, default=lr_warmup, help="LR warmup steps")
    p.add_argument("--lr-style", default="cosine", choices=("cosine", "constant", "linear"))
    p.add_argument("--min-lr", type=float, default=min_lr)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1234)


def add_output_args(p: argparse.ArgumentParser, runs: tuple[str, ...], *, out: Path) -> None:
    """--out, and the hidden options a child process is started with."""
    p.add_argument("--out", default=str(out))
    p.add_argument("--child", choices=runs, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)


def accelerate_missing(runs: list[str], script: str, without: str) -> bool:
    """True (after saying so) if a Trainer run (`hf`, `hf_...`) is to run and `accelerate`, which
    the Trainer needs, is not installed."""
    if not any(run == "hf" or run.startswith("hf_") for run in runs):
        return False
    try:
        import accelerate  # noqa: F401
    except ImportError:
        print(
            "error: the transformers Trainer needs `accelerate`; run with\n"
            f"  uv run --with accelerate python benchmarks/{script} ...\n"
            f"or leave hf out: --runs {without}",
            file=sys.stderr,
        )
        return True
    return False


def grad_acc(args: argparse.Namespace) -> int:
    if args.global_batch % args.local_batch:
        raise SystemExit("--global-batch must be a multiple of --local-batch")
    return args.global_batch // args.local_batch


def make_spec(args: argparse.Namespace, **own) -> dict:
    """What every child reads: steps, threads, timing warm-up, the script's `own` entries (model,
    data, batches), the seed and the hyper-parameters."""
    return {
        "steps": args.steps,
        "threads": args.threads,
        "warmup_steps_excluded": args.timing_warmup,
        **own,
        "seed": args.seed,
        "hp": {
            "lr": args.lr,
            "betas": list(args.betas),
            "weight_decay": args.weight_decay,
            "warmup_steps": args.lr_warmup,
            "style": args.lr_style,
            "min_lr": args.min_lr if args.lr_style != "constant" else 0.0,
            "max_grad_norm": args.max_grad_norm,
        },
    }


def write_spec(work: Path, spec: dict) -> tuple[Path, dict]:
    """Write the spec to `work`; return its path and the model's config (a dir or a JSON file)."""
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    config_path = Path(spec["model_config"])
    model_cfg = json.loads(
        (config_path / "config.json" if config_path.is_dir() else config_path).read_text()
    )
    return spec_path, model_cfg


def run_child(script: str, name: str, spec_path: Path, result_path: Path, log_path: Path) -> dict:
    cmd = [sys.executable, script, "--child", name, "--spec", str(spec_path)]
    cmd += ["--result", str(result_path)]
    env = dict(os.environ, OMP_NUM_THREADS=str(json.loads(spec_path.read_text())["threads"]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"run {name} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    result = json.loads(result_path.read_text())
    result["process_wall_s"] = time.perf_counter() - start
    return result


def run_alternated(
    script: str, args: argparse.Namespace, spec_path: Path, work: Path, measure: Measure
) -> dict[str, list[dict]]:
    """Every run of `args.runs`, `args.repeats` times, each in a child process of `script`.

    Runs are interleaved (hf, ours, ..., hf, ...) so that load from other processes on a shared
    machine hits every run alike; the load average after each is kept beside it.
    """
    attempts: dict[str, list[dict]] = {name: [] for name in args.runs}
    for rep in range(args.repeats):
        for name in args.runs:
            print(f"running {name} (repeat {rep + 1}/{args.repeats}) ...", flush=True)
            r = run_child(
                script,
                name,
                spec_path,
                work / f"{name}.{rep}.result.json",
                work / f"{name}.{rep}.log",
            )
            r["load_avg_after"] = os.getloadavg()
            attempts[name].append(r)
            print(
                f"  {name}: {measure.progress.format(**r)}, peak RSS {r['peak_rss_mib']:.0f} MiB,"
                f" loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f} ({r['process_wall_s']:.0f}"
                f" s, load avg {r['load_avg_after'][0]:.1f})",
                flush=True,
            )
    return attempts


def best_repeats(
    attempts: dict[str, list[dict]], measure: Measure, also: tuple[str, ...] = ()
) -> dict[str, dict]:
    """Each run's fastest repeat (end to end), with every repeat's rates (and `also` keys) and
    their median beside it."""
    e2e, step_only, _ = measure.rates
    results = {}
    for name, runs in attempts.items():
        best = dict(max(runs, key=lambda r: r[e2e]))
        best[f"all_repeats_{e2e}"] = [r[e2e] for r in runs]
        best[f"all_repeats_{step_only}"] = [r[step_only] for r in runs]
        for key in also:
            best[f"all_repeats_{key}"] = [r[key] for r in runs]
        best[f"median_{e2e}"] = statistics.median(best[f"all_repeats_{e2e}"])
        results[name] = best
    return results


def fmt_table(results: dict, measure: Measure, width: int, base_run: str = "hf") -> str:
    base = results.get(base_run)
    titles = [f"{measure.short}/s {t}" for t in ("e2e", "step", "med")]
    ratio_head = f"x {base_run}"
    head = f"{'run':<{width}} {'steps':>5} " + " ".join(f"{t:>10} {ratio_head:>5}" for t in titles)
    head += f" {'ms/step':>8} {'peak RSS MiB':>12} {'first loss':>10} {'last loss':>9}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        cells = []
        for key in measure.rates:
            ratio = r[key] / base[key] if base else math.nan
            cells.append(f"{r[key]:>10.{measure.digits}f} {ratio:>5.2f}")
        lines.append(
            f"{name:<{width}} {r['steps']:>5} "
            + " ".join(cells)
            + f" {1000 * r['mean_step_s']:>8.1f} {r['peak_rss_mib']:>12.0f}"
            f" {r['losses'][0]:>10.4f} {r['losses'][-1]:>9.4f}"
        )
    return "\n".join(lines)


def fmt_repeats(
    results: dict, measure: Measure, width: int, step_only: bool, base_run: str = "hf"
) -> str:
    """Every repeat's end-to-end rate (and step-only rate if `step_only`): on a shared machine
    the spread says how far to trust the best."""
    base = results.get(base_run)
    e2e, step, _ = measure.rates
    d = measure.digits
    title = f"median, median x {base_run}" + ("; step-only per repeat" if step_only else "")
    lines = [f"end-to-end {measure.label}/s of every repeat ({title}):"]
    for name, r in results.items():
        reps = ", ".join(f"{v:.{d}f}" for v in r[f"all_repeats_{e2e}"])
        median = r[f"median_{e2e}"]
        ratio = median / base[f"median_{e2e}"] if base else math.nan
        line = f"  {name:<{width}} {reps}  (median {median:.{d}f}, {ratio:.2f}x"
        if step_only:
            line += "; step only " + ", ".join(f"{v:.{d}f}" for v in r[f"all_repeats_{step}"])
        lines.append(line + ")")
    return "\n".join(lines)


def fmt_losses(results: dict, every: int, diff: bool) -> str:
    """The loss of every `every`-th step and the last; with `diff`, |hf - ours| beside them."""
    names = list(results)
    diff = diff and {"hf", "ours"} <= set(names)
    n = max(len(r["losses"]) for r in results.values())
    lines = ["step  " + "".join(f"{name:>13}" for name in names)]
    if diff:
        lines[0] += f"{'|hf - ours|':>13}"
    for i in range(n):
        if i % every and i != n - 1:
            continue
        cells = "".join(
            f"{results[k]['losses'][i]:>13.4f}" if i < len(results[k]["losses"]) else " " * 13
            for k in names
        )
        if diff:
            cells += f"{abs(results['hf']['losses'][i] - results['ours']['losses'][i]):>13.2e}"
        lines.append(f"{i + 1:>4}  {cells}")
    return "\n".join(lines)


def print_results(
    results: dict, measure: Measure, *, width: int, every: int, step_only: bool, loss_diff: bool
) -> None:
    print()
    print(fmt_table(results, measure, width))
    print(fmt_repeats(results, measure, width, step_only))
    print()
    print("training loss per optimizer step (token-weighted mean over the step's label tokens):")
    print(fmt_losses(results, every, loss_diff))


def ratios_vs_hf(results: dict, keys: tuple[str, ...], base_run: str = "hf") -> dict:
    """Each run's `keys` over `base_run`'s (empty without a `base_run` run)."""
    if base_run not in results:
        return {}
    base = results[base_run]
    return {name: {key: r[key] / base[key] for key in keys} for name, r in results.items()}


def write_report(path: str, **fields) -> None:
    """The date, the machine, then `fields`, as JSON at `path`."""
    import torch

    out = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        **fields,
    }
    out_path = Path(path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {out_path}")
