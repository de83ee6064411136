"""Throughput, peak memory and loss of `finetune.llm` against the transformers `Trainer` on CPU.

Five runs, each in its own subprocess (so `ru_maxrss` is per run), on the same randomly
initialised tiny Llama (same config, same seed: bitwise-identical initial weights), the same
tokenized chat samples and the same hyper-parameters:

  hf            transformers `Trainer`, batches padded by `automodel.core.data.collate`
  hf_padfree    the `Trainer` with transformers' `DataCollatorWithFlattening` (each batch one
                row of its samples end to end, position_ids restarting per sample) and
                `model.config.use_cache = False` (with a cache transformers does not look for
                the samples' boundaries and they would attend to each other)
  ours          `FinetuneRecipeForCausalLM`, no packing (same collate, same sample order as hf)
  ours_padfree  the recipe with `dataloader.padding_free: true`: the same batches as `ours`,
                each one row of its samples' real tokens
  ours_packed   `FinetuneRecipeForCausalLM` with `packed_sequence_size` rows

    uv run --with accelerate python benchmarks/finetune_vs_hf_trainer.py            # 5 runs x 2 repeats
    uv run --with accelerate python benchmarks/finetune_vs_hf_trainer.py --steps 30 --runs hf ours

(`Trainer` needs `accelerate`, which the workspace does not depend on: `--with accelerate` adds it
to a throw-away environment for this command only.)

What is measured, identically for every run:

- real tokens: non-padding tokens of the micro-batches each optimizer step consumed (attention-mask
  sum; for packed rows, ids != pad): for hf counted in a wrapper around its collate function, for
  ours the recipe's own `num_real_tokens` in training.jsonl (step ends come from a listener on
  the recipe's telemetry; nothing of the recipe is patched).
- tokens/s (end-to-end): real tokens of steps `warmup+1..N` divided by the wall time between the
  end of step `warmup` and the end of step N (data loading, collation, logging all included).
- tokens/s (step only): the same tokens divided by the summed time from "micro-batches in hand" to
  "optimizer step done" (hf: `on_step_begin` -> `on_step_end`; ours: the recipe's own `tps`
  window). This leaves out fetching/collating the batches.
- tokens/s (outside, `--outside SHORT`): each run again with SHORT steps; the real tokens of
  steps SHORT+1..N over the difference of the two processes' whole wall times. Start-up cancels
  out and nothing inside the trainer is timed: data loading, logging and host waits all count.
- peak RSS: `ru_maxrss` of the run's process at the end.
- loss per optimizer step. With transformers >= 4.46 (here 5.x) the Trainer passes
  `num_items_in_batch` (label tokens of all micro-batches of the step) to the model's loss, so, like
  our `MaskedCrossEntropy` normalised by `count_label_tokens` of the step, each logged value is the
  token-weighted mean over the whole optimizer step (not a mean of per-micro-batch means). With the
  same initial weights and the same sample order, `hf`, `hf_padfree`, `ours` and `ours_padfree`
  losses should agree closely (the padding-free runs see the same samples in the same steps);
  `ours_packed` sees different batches (whole packed rows), so only its trend is comparable.

The optimizer (AdamW over `automodel.core.optim.param_groups`: no decay for norms/biases) and the LR
schedule (`WarmupDecayLR`) are built by the same automodel code and handed to `Trainer(optimizers=)`,
so both runs use the very same update rule and learning rates; the Trainer still drives the loop
(its own clipping, accumulation, logging).
"""

from __future__ import annotations

import functools
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import _trainer_compare as compare
from _outside_clock import print_outside, run_outside

ASSETS = compare.ROOT / "examples" / "llm_finetune" / "assets"
RUNS = ("hf", "hf_padfree", "ours", "ours_padfree", "ours_packed")
# real (non-padding) tokens of the micro-batches of each optimizer step
REAL_TOKENS = compare.Measure(
    rate="tokens",
    counted="real_tokens",
    label="real tokens",
    short="tok",
    digits=0,
    progress="{tokens_per_s:.0f} real tok/s",
)


# --------------------------------------------------------------------------------------------
# children
# --------------------------------------------------------------------------------------------


def child_hf(spec: dict, padding_free: bool = False) -> dict:
    from transformers import DataCollatorWithFlattening

    from automodel.core.data import chat_dataset, collate
    from automodel.core.models import AutoModelForCausalLM, load_tokenizer

    t0 = time.perf_counter()
    tokenizer = load_tokenizer(spec["tokenizer"])
    dataset = chat_dataset(tokenizer, spec["data"], seq_length=spec["seq_length"])
    model = AutoModelForCausalLM.from_config(spec["model_config"], seed=spec["seed"])
    pad = tokenizer.pad_token_id
    if padding_free:  # without a cache, so that transformers finds the samples' boundaries
        model.config.use_cache = False
        batches = DataCollatorWithFlattening()
    else:
        batches = functools.partial(collate, pad_token_id=pad)
    counter = compare.CountingCollate(batches, pad)
    run = compare.train_with_trainer(spec, model, dataset, counter, t0, prefix="hf_trainer_")
    return run.result(spec, REAL_TOKENS, step_real_tokens=run.per_step(counter.tokens))


def child_ours(spec: dict, packed: bool = False, padding_free: bool = False) -> dict:
    from automodel.recipes.llm import SECTIONS, FinetuneRecipeForCausalLM

    prefix = "ours_packed_" if packed else "ours_padfree_" if padding_free else "ours_"
    run_dir = Path(tempfile.mkdtemp(prefix=prefix))
    cfg = compare.recipe_config(
        spec,
        run_dir,
        model_target="automodel.core.models.AutoModelForCausalLM.from_config",
        local_batch=spec["packed_local_batch"] if packed else spec["local_batch"],
        data={
            "tokenizer": {
                "_target_": "automodel.core.models.load_tokenizer",
                "path_or_name": spec["tokenizer"],
            },
            "dataset": {
                "_target_": "automodel.core.data.chat_dataset",
                "path": spec["data"],
                "seq_length": spec["seq_length"],
            },
        },
    )
    if packed:
        cfg["packed_sequence"] = {"packed_sequence_size": spec["packed_size"]}
    cfg["dataloader"]["padding_free"] = padding_free
    run = compare.run_recipe(FinetuneRecipeForCausalLM, SECTIONS, cfg, run_dir)
    result = run.result(spec, REAL_TOKENS)
    efficiency = getattr(run.recipe.train_set, "efficiency", None)
    if efficiency is not None:
        result["packing_efficiency"] = efficiency
        result["packed_rows"] = len(run.recipe.train_set)
    return result


# --------------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------------


def _write_model_config(args, tokenizer_vocab: int, out_dir: Path) -> str:
    if args.model_config:
        return str(Path(args.model_config).resolve())
    config = json.loads((ASSETS / "tiny_llama" / "config.json").read_text())
    vocab = -(-tokenizer_vocab // 64) * 64
    config.update(
        vocab_size=vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
    )
    model_dir = out_dir / "tiny_llama_bench"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    return str(model_dir)


def _write_varied_chat(path: Path, seed: int, samples: int = 4000, lognormal: bool = False) -> Path:
    """Word-reversal chats whose lengths spread like real SFT data: mostly short, a long tail.

    70% ask to reverse 2-8 words, 25% 9-30 and 5% 31-70 (words drawn with replacement), so a
    padded batch is dominated by its longest sample while packing wastes almost nothing. With
    `lognormal` the word count is log-normal (median 30, sigma 0.8) up to 270 words: chats of
    ~10 to ~550 tokens, a few of them longer than a 512-token sequence.
    """
    import random

    sys.path.insert(0, str(ASSETS))
    from make_data import WORDS

    rng = random.Random(seed)
    rows = []
    for _ in range(samples):
        if lognormal:
            low = high = min(270, max(2, round(rng.lognormvariate(math.log(30), 0.8))))
        else:
            low, high = rng.choices([(2, 8), (9, 30), (31, 70)], weights=[70, 25, 5])[0]
        words = rng.choices(WORDS, k=rng.randint(low, high))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": "reverse " + " ".join(words)},
                    {"role": "assistant", "content": " ".join(reversed(words))},
                ]
            }
        )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _packed_local_batch(args, tokenizer_path: str) -> tuple[int, dict]:
    """Rows per packed micro-batch so that a packed step holds about as many real tokens as an
    unpadded step of `global_batch` samples (so the two runs take comparable optimizer steps)."""
    from automodel.core.data import chat_dataset, pack_dataset
    from automodel.core.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    dataset = chat_dataset(tokenizer, args.data, seq_length=args.seq_length)
    lengths = dataset.lengths().float()
    packed = pack_dataset(dataset, args.packed_size, pad_token_id=tokenizer.pad_token_id)
    info = {
        "samples": len(dataset),
        "mean_sample_tokens": float(lengths.mean()),
        "min_sample_tokens": int(lengths.min()),
        "max_sample_tokens": int(lengths.max()),
        "packed_rows": len(packed),
        "packing_efficiency": packed.efficiency,
        "tokenizer_vocab": len(tokenizer),
    }
    if args.packed_local_batch:
        return args.packed_local_batch, info
    tokens_per_step = args.global_batch * float(lengths.mean())
    rows = tokens_per_step / (args.packed_size * packed.efficiency)
    grad_acc = args.global_batch // args.local_batch
    return max(1, round(rows / grad_acc)), info


def main(argv: list[str] | None = None) -> int:
    p = compare.parser(__doc__, RUNS, steps=60)
    p.add_argument("--model-config", help="a HF config dir/json instead of the generated one")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=688)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument(
        "--data",
        default=str(ASSETS / "reverse_train.jsonl"),
        help="chat jsonl, or generated samples of very different lengths: `varied` (10-146 "
        "tokens) or `lognormal` (a log-normal mix with a long tail, up to ~550 tokens)",
    )
    p.add_argument(
        "--outside",
        type=int,
        default=0,
        metavar="SHORT",
        help="also time whole processes: each run again at SHORT steps (see above)",
    )
    p.add_argument("--tokenizer", default=str(ASSETS / "tiny_tokenizer"))
    p.add_argument("--seq-length", type=int, default=64)
    compare.add_batch_args(p)
    p.add_argument("--packed-size", type=int, default=256)
    p.add_argument(
        "--packed-local-batch",
        type=int,
        default=0,
        help="rows per packed micro-batch (default: as many real tokens per step as unpacked)",
    )
    compare.add_optimizer_args(p, lr=3e-3, lr_warmup=6, min_lr=3e-4)
    compare.add_output_args(
        p, RUNS, out=compare.ROOT / "benchmarks/results/finetune_vs_hf_trainer.json"
    )
    args = p.parse_args(argv)

    if args.child:
        children = {
            "hf": child_hf,
            "hf_padfree": functools.partial(child_hf, padding_free=True),
            "ours": child_ours,
            "ours_padfree": functools.partial(child_ours, padding_free=True),
            "ours_packed": functools.partial(child_ours, packed=True),
        }
        return compare.child_main(args, children)
    ours = "ours ours_padfree ours_packed"
    if compare.accelerate_missing(args.runs, "finetune_vs_hf_trainer.py", ours):
        return 2
    acc = compare.grad_acc(args)

    work = Path(tempfile.mkdtemp(prefix="finetune_vs_hf_"))
    if args.data in ("varied", "lognormal"):
        path = work / f"{args.data}_chat.jsonl"
        args.data = str(_write_varied_chat(path, args.seed, lognormal=args.data == "lognormal"))
    from automodel.core.models import load_tokenizer

    vocab = len(load_tokenizer(args.tokenizer))
    packed_local, data_info = _packed_local_batch(args, args.tokenizer)
    spec = compare.make_spec(
        args,
        model_config=_write_model_config(args, vocab, work),
        tokenizer=str(Path(args.tokenizer).resolve()),
        data=str(Path(args.data).resolve()),
        seq_length=args.seq_length,
        local_batch=args.local_batch,
        grad_acc=acc,
        packed_size=args.packed_size,
        packed_local_batch=packed_local,
    )
    spec_path, model_cfg = compare.write_spec(work, spec)
    print(f"work dir {work}")
    print(
        f"model: {model_cfg.get('num_hidden_layers')} layers, hidden {model_cfg.get('hidden_size')}, "
        f"intermediate {model_cfg.get('intermediate_size')}, vocab {model_cfg.get('vocab_size')}; "
        f"data: {data_info['samples']} samples of {data_info['min_sample_tokens']}-"
        f"{data_info['max_sample_tokens']} tokens (mean {data_info['mean_sample_tokens']:.1f}); "
        f"batch {args.global_batch} = {args.local_batch} x {acc}; packed: "
        f"{packed_local} x {acc} rows of {args.packed_size} "
        f"({100 * data_info['packing_efficiency']:.1f}% real)",
        flush=True,
    )

    # each run reports its fastest repeat
    attempts = compare.run_alternated(__file__, args, spec_path, work, REAL_TOKENS)
    results = compare.best_repeats(attempts, REAL_TOKENS)
    every = max(1, args.steps // 12)
    compare.print_results(
        results, REAL_TOKENS, width=12, every=every, step_only=False, loss_diff=False
    )

    outside = None
    if args.outside:
        outside = run_outside(__file__, args, spec_path, work, args.outside, attempts)
        print_outside(outside)

    compare.write_report(
        args.out,
        spec=spec,
        model_config=model_cfg,
        data=data_info,
        results=results,
        ratios_vs_hf=compare.ratios_vs_hf(results, REAL_TOKENS.rates),
        outside=outside,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
