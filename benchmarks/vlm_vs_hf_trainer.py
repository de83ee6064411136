"""Throughput, peak memory and loss of `finetune.vlm` against the transformers `Trainer` on CPU.

Two runs, each in its own subprocess (so `ru_maxrss` is per run), on the same randomly
initialised tiny LLaVA (`examples/vlm_finetune/assets/tiny_llava`: a CLIP vision tower, a
projector and a Llama, 124,736 parameters; same config, same seed: bitwise-identical initial
weights), the same image-text conversations (`assets/train.jsonl`, 32x32 PNGs decoded on
access), the same processor and the same hyper-parameters:

  hf    transformers `Trainer`; data: `automodel.core.data.image_chat_dataset`, batches made by
        `automodel.core.data.VisionChatCollator(processor)` (labels on the answers only)
  ours  `FinetuneRecipeForVLM` (setup(), then run_train_validation_loop()) from a YAML generated
        from examples/vlm_finetune/tiny_vlm.yaml: no validation, no checkpoint, no shuffling
        (the same dataset, collator and sample order as hf)

    uv run --with accelerate python benchmarks/vlm_vs_hf_trainer.py            # ~3 min on 2 cores
    uv run --with accelerate python benchmarks/vlm_vs_hf_trainer.py --steps 8 --repeats 1

(`Trainer` needs `accelerate`; it is in the workspace's dev group, and `--with accelerate` adds it
to a throw-away environment for this command where that group is not installed.)

What is measured, identically for both runs:

- samples: image-text rows of the micro-batches each optimizer step consumed. For hf they are
  counted in a wrapper around the collator; the recipe's loader drops a last short batch, so its
  step is `local_batch x grad_acc` rows, and the real (non-padding) tokens of every step, which
  both sides record (hf: the wrapper's attention-mask sum; ours: the recipe's own
  `num_real_tokens` in training.jsonl), are checked to be equal step for step: the same batches
  in the same order. Step ends of ours come from a listener on the recipe's telemetry; nothing of
  the recipe is patched.
- samples/s (end-to-end): samples of steps `warmup+1..N` divided by the wall time between the end
  of step `warmup` and the end of step N (image decoding, collation, logging all included).
- samples/s (step only): the same samples divided by the summed time from "micro-batches in hand"
  to "optimizer step done" (hf: `on_step_begin` -> `on_step_end`; ours: the recipe's own `tps`
  window). This leaves out reading the images and collating the batches.
- peak RSS: `ru_maxrss` of the run's process at the end.
- loss per optimizer step. LLaVA's loss (`ForCausalLMLoss`) shifts the labels inside the model and,
  with transformers >= 4.46 (here 5.x), divides the summed token loss by the `num_items_in_batch`
  the Trainer passes: the label tokens of all micro-batches of the step (counted over
  `labels[..., 1:]`, the predicted positions). The recipe shifts with `shift_labels` and divides by
  the step's label tokens (`MaskedCrossEntropy`). Both log the token-weighted mean over the whole
  optimizer step, so with the same initial weights and batches the two losses must agree at every
  step; the largest difference is reported (and the exit status is 1 above `--loss-tolerance`).

The model is so small (a step is ~30 ms of compute) that two intra-op threads gain nothing, and
on a 2-core machine shared with other jobs they lose a lot: when another process takes a core,
every parallel op waits for the descheduled thread and a step can take 2 s instead of 50 ms.
Read the repeats and the load average beside the figures; `--threads 1` is far less sensitive.

The optimizer (AdamW over `automodel.core.optim.param_groups`: no decay for norms/biases) and the LR
schedule (`WarmupDecayLR`) are built by the same automodel code and handed to `Trainer(optimizers=)`,
so both runs use the very same update rule and learning rates; the Trainer still drives the loop
(its own clipping, accumulation, logging).
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
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "examples" / "vlm_finetune" / "assets"
RUNS = ("hf", "ours")


# --------------------------------------------------------------------------------------------
# shared helpers (children)
# --------------------------------------------------------------------------------------------


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class CountingCollate:
    """Wraps a collator; records the rows and real tokens of every batch it builds, in order."""

    def __init__(self, fn):
        self.fn = fn
        self.rows: list[int] = []
        self.tokens: list[int] = []
        self.seconds = 0.0

    def __call__(self, samples):
        start = time.perf_counter()
        batch = self.fn(samples)
        self.seconds += time.perf_counter() - start
        self.rows.append(int(batch["input_ids"].shape[0]))
        self.tokens.append(int(batch["attention_mask"].sum()))
        return batch


def _per_step(counts: list[int], grad_acc: int, steps: int) -> list[int]:
    """Batches are consumed in the order they were collated (prefetching only adds to the tail)."""
    return [sum(counts[i * grad_acc : (i + 1) * grad_acc]) for i in range(steps)]


def _summarise(
    spec: dict, step_samples: list[int], step_ends: list[float], step_secs: list[float]
) -> dict:
    w = max(1, spec["warmup_steps_excluded"])  # timing starts at the end of step w
    n = len(step_ends)
    if n <= w:
        raise SystemExit(f"only {n} steps ran; need more than --timing-warmup={w}")
    samples = sum(step_samples[w:n])
    wall = step_ends[n - 1] - step_ends[w - 1]
    return {
        "timed_steps": n - w,
        "timed_samples": samples,
        "timed_wall_s": wall,
        "samples_per_s": samples / wall,
        "samples_per_s_step_only": samples / sum(step_secs[w:n]),
        "mean_step_s": wall / (n - w),
        # robust to bursts of load from other processes: the median step's own rate
        "samples_per_s_median_step": statistics.median(
            s / t for s, t in zip(step_samples[w:n], step_secs[w:n], strict=True)
        ),
    }


def _torch_setup(spec: dict):
    import torch

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    return torch


# --------------------------------------------------------------------------------------------
# child: transformers Trainer
# --------------------------------------------------------------------------------------------


def child_hf(spec: dict) -> dict:
    torch = _torch_setup(spec)
    import transformers
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from automodel.core.data import VisionChatCollator, image_chat_dataset
    from automodel.core.models import AutoModelForImageTextToText, load_processor
    from automodel.core.optim import WarmupDecayLR, build_optimizer

    t0 = time.perf_counter()
    processor = load_processor(spec["processor"])
    dataset = image_chat_dataset(spec["data"])
    model = AutoModelForImageTextToText.from_config(spec["model_config"], seed=spec["seed"])
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
    counter = CountingCollate(VisionChatCollator(processor))

    class Timer(TrainerCallback):
        def __init__(self):
            self.begin: float | None = None
            self.ends: list[float] = []
            self.secs: list[float] = []
            self.losses: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.ends.append(now)
            self.secs.append(now - self.begin)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    timer = Timer()
    out_dir = tempfile.mkdtemp(prefix="hf_trainer_vlm_")
    args = TrainingArguments(
        output_dir=out_dir,
        use_cpu=True,
        report_to=[],
        dataloader_num_workers=0,  # as the recipe's loader (dataloader.num_workers default)
        dataloader_drop_last=True,
        remove_unused_columns=False,  # items are {"messages", "images"}: the collator's input
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
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=counter,
        optimizers=(optimizer, scheduler),
        callbacks=[timer],
    )
    setup_s = time.perf_counter() - t0
    start = time.perf_counter()
    trainer.train()
    loop_s = time.perf_counter() - start
    steps = len(timer.ends)
    step_samples = _per_step(counter.rows, spec["grad_acc"], steps)
    return {
        "transformers": transformers.__version__,
        "setup_s": setup_s,
        "loop_s": loop_s,
        "collate_s": counter.seconds,
        "collated_batches": len(counter.rows),
        "model_accepts_loss_kwargs": trainer.model_accepts_loss_kwargs,  # num_items_in_batch
        "steps": steps,
        "losses": timer.losses,
        "step_samples": step_samples,
        "step_real_tokens": _per_step(counter.tokens, spec["grad_acc"], steps),
        "step_s": timer.secs,
        **_summarise(spec, step_samples, timer.ends, timer.secs),
        "peak_rss_mib": _peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------------------------
# child: our recipe
# --------------------------------------------------------------------------------------------


def _recipe_config(spec: dict, run_dir: Path) -> dict:
    """examples/vlm_finetune/tiny_vlm.yaml with the benchmark's steps and hyper-parameters, no
    validation dataset, no checkpoint and no shuffling."""
    hp = spec["hp"]
    return {
        "step_scheduler": {
            "global_batch_size": spec["local_batch"] * spec["grad_acc"],
            "local_batch_size": spec["local_batch"],
            "max_steps": spec["steps"],
            "num_epochs": None,
            "val_every_steps": None,
            "ckpt_every_steps": None,
            "log_every_steps": 1,
        },
        "model": {
            "_target_": "automodel.core.models.AutoModelForImageTextToText.from_config",
            "config": spec["model_config"],
            "seed": spec["seed"],
        },
        "processor": {
            "_target_": "automodel.core.models.load_processor",
            "path_or_name": spec["processor"],
        },
        "dataset": {"_target_": "automodel.core.data.image_chat_dataset", "path": spec["data"]},
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


def child_ours(spec: dict) -> dict:
    torch = _torch_setup(spec)
    import yaml

    from automodel.core.config import load_config, validate_config
    from automodel.recipes.vlm import SECTIONS, FinetuneRecipeForVLM

    run_dir = Path(tempfile.mkdtemp(prefix="ours_vlm_"))
    cfg_path = run_dir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(_recipe_config(spec, run_dir), sort_keys=False))

    t0 = time.perf_counter()
    cfg = load_config(cfg_path)
    validate_config(cfg, SECTIONS)
    recipe = FinetuneRecipeForVLM(cfg)
    recipe.setup()
    setup_s = time.perf_counter() - t0

    # the end of each step, through the telemetry's public listeners (no patching)
    ends: list[float] = []
    recipe.telemetry.listeners.append(lambda sample: ends.append(time.perf_counter()))

    start = time.perf_counter()
    recipe.run_train_validation_loop()
    loop_s = time.perf_counter() - start

    rows = [json.loads(line) for line in (run_dir / "training.jsonl").read_text().splitlines()]
    steps = len(rows)
    step_tokens = [r["num_real_tokens"] for r in rows]  # every rank's real tokens of the step
    # the loader drops a last short batch: every step is local_batch x grad_acc full rows
    step_samples = [recipe.step_scheduler.global_batch_size] * steps
    # the recipe's tps covers forward/backward/clip/optimizer; recover its window per step
    step_secs = [t / r["tps"] for t, r in zip(step_tokens, rows, strict=True)]
    return {
        "setup_s": setup_s,
        "loop_s": loop_s,
        "steps": steps,
        "losses": [r["loss"] for r in rows],
        "recipe_tps": [r["tps"] for r in rows],
        "step_samples": step_samples,
        "step_real_tokens": step_tokens,
        "step_s": step_secs,
        **_summarise(spec, step_samples, ends, step_secs),
        "peak_rss_mib": _peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
        "local_batch": cfg.get("step_scheduler.local_batch_size"),
        "run_dir": str(run_dir),
    }


# --------------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------------


def _data_info(args) -> dict:
    """Samples, images and tokens per sample (one collated batch of every sample)."""
    from automodel.core.data import VisionChatCollator, image_chat_dataset
    from automodel.core.losses import IGNORE_INDEX
    from automodel.core.models import load_processor

    dataset = image_chat_dataset(args.data)
    collator = VisionChatCollator(load_processor(args.processor))
    sample = [dataset[i] for i in range(min(len(dataset), 256))]
    batch = collator(sample)
    lengths = batch["attention_mask"].sum(-1).float()
    return {
        "samples": len(dataset),
        "measured_on_first": len(sample),
        "images_per_sample": statistics.mean(len(s["images"]) for s in sample),
        "pixel_values_shape_per_image": list(batch["pixel_values"].shape[1:]),
        "mean_sample_tokens": float(lengths.mean()),
        "min_sample_tokens": int(lengths.min()),
        "max_sample_tokens": int(lengths.max()),
        "mean_label_tokens": float((batch["labels"] != IGNORE_INDEX).sum(-1).float().mean()),
    }


def _run_child(name: str, spec_path: Path, result_path: Path, log_path: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--spec", str(spec_path)]
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


def _loss_check(attempts: dict[str, list[dict]]) -> dict:
    """Largest per-step |loss(hf) - loss(ours)| of repeat i against repeat i, and whether both saw
    the same batches (real tokens equal at every step)."""
    if not {"hf", "ours"} <= attempts.keys():
        return {}
    diffs, same_batches = [], True
    for hf, ours in zip(attempts["hf"], attempts["ours"], strict=True):
        if len(hf["losses"]) != len(ours["losses"]):
            raise SystemExit(f"hf logged {len(hf['losses'])} losses, ours {len(ours['losses'])}")
        diffs.append([abs(a - b) for a, b in zip(hf["losses"], ours["losses"], strict=True)])
        same_batches &= hf["step_real_tokens"] == ours["step_real_tokens"]
    worst = max(range(len(diffs[0])), key=lambda i: max(d[i] for d in diffs))
    return {
        "max_abs_loss_diff": max(max(d) for d in diffs),
        "max_abs_loss_diff_step": worst + 1,
        "max_rel_loss_diff": max(
            abs(a - b) / abs(a)
            for hf, ours in zip(attempts["hf"], attempts["ours"], strict=True)
            for a, b in zip(hf["losses"], ours["losses"], strict=True)
        ),
        "max_abs_loss_diff_per_repeat": [max(d) for d in diffs],
        "same_real_tokens_every_step": same_batches,
        # a run is deterministic: its repeats must log the very same losses
        "repeats_identical": {
            name: all(r["losses"] == runs[0]["losses"] for r in runs)
            for name, runs in attempts.items()
        },
    }


def _fmt_table(results: dict) -> str:
    base = results.get("hf")
    metrics = (
        ("samples_per_s", "smp/s e2e"),
        ("samples_per_s_step_only", "smp/s step"),
        ("samples_per_s_median_step", "smp/s med"),
    )
    head = f"{'run':<6} {'steps':>5} " + " ".join(f"{t:>10} {'x hf':>5}" for _, t in metrics)
    head += f" {'ms/step':>8} {'peak RSS MiB':>12} {'first loss':>10} {'last loss':>9}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        cells = []
        for key, _ in metrics:
            ratio = r[key] / base[key] if base else math.nan
            cells.append(f"{r[key]:>10.1f} {ratio:>5.2f}")
        lines.append(
            f"{name:<6} {r['steps']:>5} " + " ".join(cells) + f" {1000 * r['mean_step_s']:>8.1f}"
            f" {r['peak_rss_mib']:>12.0f} {r['losses'][0]:>10.4f} {r['losses'][-1]:>9.4f}"
        )
    return "\n".join(lines)


def _fmt_repeats(results: dict) -> str:
    """Every repeat's end-to-end rate: on a shared machine the spread says how far to trust the best."""
    base = results.get("hf")
    lines = ["end-to-end samples/s of every repeat (median, median x hf; step-only per repeat):"]
    for name, r in results.items():
        reps = ", ".join(f"{v:.1f}" for v in r["all_repeats_samples_per_s"])
        step = ", ".join(f"{v:.1f}" for v in r["all_repeats_samples_per_s_step_only"])
        ratio = r["median_samples_per_s"] / base["median_samples_per_s"] if base else math.nan
        lines.append(
            f"  {name:<6} {reps}  (median {r['median_samples_per_s']:.1f}, {ratio:.2f}x; "
            f"step only {step})"
        )
    return "\n".join(lines)


def _fmt_losses(results: dict, every: int) -> str:
    names = list(results)
    n = max(len(r["losses"]) for r in results.values())
    lines = ["step  " + "".join(f"{name:>13}" for name in names)]
    if {"hf", "ours"} <= set(names):
        lines[0] += f"{'|hf - ours|':>13}"
    for i in range(n):
        if i % every and i != n - 1:
            continue
        cells = "".join(
            f"{results[k]['losses'][i]:>13.4f}" if i < len(results[k]["losses"]) else " " * 13
            for k in names
        )
        if {"hf", "ours"} <= set(names):
            cells += f"{abs(results['hf']['losses'][i] - results['ours']['losses'][i]):>13.2e}"
        lines.append(f"{i + 1:>4}  {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    p.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    p.add_argument("--timing-warmup", type=int, default=5, help="first steps left out of timing")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats; best is reported")
    p.add_argument("--model-config", default=str(ASSETS / "tiny_llava"), help="HF config dir/json")
    p.add_argument("--processor", default=str(ASSETS / "tiny_processor"))
    p.add_argument("--data", default=str(ASSETS / "train.jsonl"), help="image-chat jsonl")
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--local-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.98))
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--lr-warmup", type=int, default=5, help="LR warmup steps")
    p.add_argument("--lr-style", default="cosine", choices=("cosine", "constant", "linear"))
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument(
        "--loss-tolerance",
        type=float,
        default=1e-3,
        help="largest per-step |loss(hf) - loss(ours)| accepted (exit status 1 above it)",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/vlm_vs_hf_trainer.json"))
    p.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        result = child_hf(spec) if args.child == "hf" else child_ours(spec)
        Path(args.result).write_text(json.dumps(result))
        return 0

    if "hf" in args.runs:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            print(
                "error: the transformers Trainer needs `accelerate`; run with\n"
                "  uv run --with accelerate python benchmarks/vlm_vs_hf_trainer.py ...\n"
                "or leave hf out: --runs ours",
                file=sys.stderr,
            )
            return 2
    if args.global_batch % args.local_batch:
        raise SystemExit("--global-batch must be a multiple of --local-batch")

    work = Path(tempfile.mkdtemp(prefix="vlm_vs_hf_"))
    data_info = _data_info(args)
    spec = {
        "steps": args.steps,
        "threads": args.threads,
        "warmup_steps_excluded": args.timing_warmup,
        "model_config": str(Path(args.model_config).resolve()),
        "processor": str(Path(args.processor).resolve()),
        "data": str(Path(args.data).resolve()),
        "local_batch": args.local_batch,
        "grad_acc": args.global_batch // args.local_batch,
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
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    config_path = Path(spec["model_config"])
    model_cfg = json.loads(
        (config_path / "config.json" if config_path.is_dir() else config_path).read_text()
    )
    text, vision = model_cfg.get("text_config", {}), model_cfg.get("vision_config", {})
    print(f"work dir {work}")
    print(
        f"model: {model_cfg.get('model_type')}; text {text.get('num_hidden_layers')} layers, "
        f"hidden {text.get('hidden_size')}, vocab {text.get('vocab_size')}; vision "
        f"{vision.get('num_hidden_layers')} layers, hidden {vision.get('hidden_size')}, image "
        f"{vision.get('image_size')} px; data: {data_info['samples']} samples, "
        f"{data_info['images_per_sample']:.0f} image(s) each, {data_info['min_sample_tokens']}-"
        f"{data_info['max_sample_tokens']} tokens (mean {data_info['mean_sample_tokens']:.1f}, "
        f"{data_info['mean_label_tokens']:.1f} labeled); batch {args.global_batch} = "
        f"{args.local_batch} x {spec['grad_acc']}",
        flush=True,
    )

    # Runs are interleaved (hf, ours, hf, ...) so that load from other processes on a shared
    # machine hits both alike; each run reports its fastest repeat beside every repeat.
    attempts: dict[str, list[dict]] = {name: [] for name in args.runs}
    for rep in range(args.repeats):
        for name in args.runs:
            print(f"running {name} (repeat {rep + 1}/{args.repeats}) ...", flush=True)
            r = _run_child(
                name, spec_path, work / f"{name}.{rep}.result.json", work / f"{name}.{rep}.log"
            )
            r["load_avg_after"] = os.getloadavg()
            attempts[name].append(r)
            print(
                f"  {name}: {r['samples_per_s']:.1f} samples/s ({r['samples_per_s_step_only']:.1f}"
                f" step only), peak RSS {r['peak_rss_mib']:.0f} MiB, loss {r['losses'][0]:.4f} ->"
                f" {r['losses'][-1]:.4f} ({r['process_wall_s']:.0f} s, load avg "
                f"{r['load_avg_after'][0]:.1f})",
                flush=True,
            )
    results = {}
    for name, runs in attempts.items():
        best = dict(max(runs, key=lambda r: r["samples_per_s"]))
        best["all_repeats_samples_per_s"] = [r["samples_per_s"] for r in runs]
        best["all_repeats_samples_per_s_step_only"] = [r["samples_per_s_step_only"] for r in runs]
        best["all_repeats_peak_rss_mib"] = [r["peak_rss_mib"] for r in runs]
        best["all_repeats_load_avg_after"] = [r["load_avg_after"] for r in runs]
        best["median_samples_per_s"] = statistics.median(best["all_repeats_samples_per_s"])
        results[name] = best
    check = _loss_check(attempts)

    print()
    print(_fmt_table(results))
    print(_fmt_repeats(results))
    print()
    print("training loss per optimizer step (token-weighted mean over the step's label tokens):")
    print(_fmt_losses(results, every=max(1, args.steps // 10)))
    losses_agree = True
    if check:
        losses_agree = check["max_abs_loss_diff"] <= args.loss_tolerance
        print(
            f"\nmax |loss(hf) - loss(ours)| over every step and repeat: "
            f"{check['max_abs_loss_diff']:.2e} (step {check['max_abs_loss_diff_step']}; relative "
            f"{check['max_rel_loss_diff']:.2e}); same real tokens at every step: "
            f"{check['same_real_tokens_every_step']}; repeats identical: "
            f"{check['repeats_identical']}"
        )
        if not losses_agree or not check["same_real_tokens_every_step"]:
            print(f"WARNING: the runs disagree (tolerance {args.loss_tolerance:g})")

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
        "spec": spec,
        "model_config": model_cfg,
        "data": data_info,
        "results": results,
        "loss_check": check,
        "ratios_vs_hf": {
            name: {
                "samples_per_s": r["samples_per_s"] / results["hf"]["samples_per_s"],
                "samples_per_s_step_only": r["samples_per_s_step_only"]
                / results["hf"]["samples_per_s_step_only"],
                "samples_per_s_median_step": r["samples_per_s_median_step"]
                / results["hf"]["samples_per_s_median_step"],
                "median_samples_per_s": r["median_samples_per_s"]
                / results["hf"]["median_samples_per_s"],
            }
            for name, r in results.items()
            if "hf" in results
        },
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {out_path}")
    if not check:
        return 0
    return 0 if losses_agree and check["same_real_tokens_every_step"] else 1


if __name__ == "__main__":
    sys.exit(main())
