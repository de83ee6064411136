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

import statistics
import sys
import tempfile
import time
from pathlib import Path

import _trainer_compare as compare

ASSETS = compare.ROOT / "examples" / "vlm_finetune" / "assets"
RUNS = ("hf", "ours")
# image-text rows of the micro-batches of each optimizer step
SAMPLES = compare.Measure(
    rate="samples",
    counted="samples",
    label="samples",
    short="smp",
    digits=1,
    progress="{samples_per_s:.1f} samples/s ({samples_per_s_step_only:.1f} step only)",
)


# --------------------------------------------------------------------------------------------
# children
# --------------------------------------------------------------------------------------------


def child_hf(spec: dict) -> dict:
    from automodel.core.data import VisionChatCollator, image_chat_dataset
    from automodel.core.models import AutoModelForImageTextToText, load_processor

    t0 = time.perf_counter()
    processor = load_processor(spec["processor"])
    dataset = image_chat_dataset(spec["data"])
    model = AutoModelForImageTextToText.from_config(spec["model_config"], seed=spec["seed"])
    counter = compare.CountingCollate(VisionChatCollator(processor))
    run = compare.train_with_trainer(
        spec,
        model,
        dataset,
        counter,
        t0,
        prefix="hf_trainer_vlm_",
        remove_unused_columns=False,  # items are {"messages", "images"}: the collator's input
    )
    return run.result(
        spec,
        SAMPLES,
        {
            "collated_batches": len(counter.rows),
            "model_accepts_loss_kwargs": run.trainer.model_accepts_loss_kwargs,  # num_items_in_batch
        },
        step_samples=run.per_step(counter.rows),
        step_real_tokens=run.per_step(counter.tokens),
    )


def child_ours(spec: dict) -> dict:
    """examples/vlm_finetune/tiny_vlm.yaml with the benchmark's steps and hyper-parameters, no
    validation dataset, no checkpoint and no shuffling."""
    from automodel.recipes.vlm import SECTIONS, FinetuneRecipeForVLM

    run_dir = Path(tempfile.mkdtemp(prefix="ours_vlm_"))
    cfg = compare.recipe_config(
        spec,
        run_dir,
        model_target="automodel.core.models.AutoModelForImageTextToText.from_config",
        local_batch=spec["local_batch"],
        data={
            "processor": {
                "_target_": "automodel.core.models.load_processor",
                "path_or_name": spec["processor"],
            },
            "dataset": {"_target_": "automodel.core.data.image_chat_dataset", "path": spec["data"]},
        },
    )
    run = compare.run_recipe(FinetuneRecipeForVLM, SECTIONS, cfg, run_dir)
    # the loader drops a last short batch: every step is local_batch x grad_acc full rows
    step_samples = [run.recipe.step_scheduler.global_batch_size] * len(run.rows)
    return run.result(spec, SAMPLES, step_samples=step_samples)


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


def main(argv: list[str] | None = None) -> int:
    p = compare.parser(__doc__, RUNS, steps=40)
    p.add_argument("--model-config", default=str(ASSETS / "tiny_llava"), help="HF config dir/json")
    p.add_argument("--processor", default=str(ASSETS / "tiny_processor"))
    p.add_argument("--data", default=str(ASSETS / "train.jsonl"), help="image-chat jsonl")
    compare.add_batch_args(p)
    compare.add_optimizer_args(p, lr=1e-3, lr_warmup=5, min_lr=1e-4)
    p.add_argument(
        "--loss-tolerance",
        type=float,
        default=1e-3,
        help="largest per-step |loss(hf) - loss(ours)| accepted (exit status 1 above it)",
    )
    compare.add_output_args(p, RUNS, out=compare.ROOT / "benchmarks/results/vlm_vs_hf_trainer.json")
    args = p.parse_args(argv)

    if args.child:
        return compare.child_main(args, {"hf": child_hf, "ours": child_ours})
    if compare.accelerate_missing(args.runs, "vlm_vs_hf_trainer.py", "ours"):
        return 2
    acc = compare.grad_acc(args)

    work = Path(tempfile.mkdtemp(prefix="vlm_vs_hf_"))
    data_info = _data_info(args)
    spec = compare.make_spec(
        args,
        model_config=str(Path(args.model_config).resolve()),
        processor=str(Path(args.processor).resolve()),
        data=str(Path(args.data).resolve()),
        local_batch=args.local_batch,
        grad_acc=acc,
    )
    spec_path, model_cfg = compare.write_spec(work, spec)
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
        f"{args.local_batch} x {acc}",
        flush=True,
    )

    # each run reports its fastest repeat beside every repeat
    attempts = compare.run_alternated(__file__, args, spec_path, work, SAMPLES)
    results = compare.best_repeats(attempts, SAMPLES, also=("peak_rss_mib", "load_avg_after"))
    check = _loss_check(attempts)

    every = max(1, args.steps // 10)
    compare.print_results(results, SAMPLES, width=6, every=every, step_only=True, loss_diff=True)
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

    compare.write_report(
        args.out,
        spec=spec,
        model_config=model_cfg,
        data=data_info,
        results=results,
        loss_check=check,
        ratios_vs_hf=compare.ratios_vs_hf(results, (*SAMPLES.rates, "median_samples_per_s")),
    )
    if not check:
        return 0
    return 0 if losses_agree and check["same_real_tokens_every_step"] else 1


if __name__ == "__main__":
    sys.exit(main())
