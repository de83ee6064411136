"""Throughput, peak memory and retrieval quality of `finetune.bi_encoder` against
sentence-transformers' own `SentenceTransformerTrainer` with `MultipleNegativesRankingLoss`.

  st    `SentenceTransformer(modules=[Transformer(folder), Pooling(mean), Normalize()])`, loss
        `MultipleNegativesRankingLoss(scale=1/temperature)`, columns anchor/positive/negative, the
        prefixes as `prompts`, ST's own collator and optimizer (transformers' default
        `adamw_torch_fused`; `--st-optim adamw_torch` is torch's default, as the recipe's)
  ours  `BiEncoderRecipe` (setup(), run_train_validation_loop()) from a generated YAML: no
        validation, no checkpoint, no shuffling

    uv run python benchmarks/bi_encoder_vs_sentence_transformers.py [--smoke]   # ~100 s [25 s]

One subprocess per run (`ru_maxrss` per run), alternated over the repeats. Both load one folder
(tiny_bert built once with `--seed`, and the tokenizer) and train on train.jsonl in file order with
the same hard negative per query (the recipe's seeded pick), the same batch, steps, prefixes, one
max length for all texts (ST's `Transformer` has one; 48 truncates nothing), fp32, AdamW (same lr,
betas, eps, no weight decay), linear decay to 0 without warmup (ST's default), clipping at 1.0,
and the same InfoNCE: with `--dropout 0` their losses agree at every step (~1e-5). Not ST's
defaults: sequential batches (`BATCH_SAMPLER` shuffles, `NO_DUPLICATES` drops rows: here its
`DefaultBatchSampler` over a `SequentialSampler`), no evaluation, saving, progress bar.

Measured: query-positive pairs/s over steps `warmup+1..N` from in-process step ends (a
`TrainerCallback`; the recipe's telemetry listener), step-only pairs/s, the process's wall time,
peak RSS (before evaluation; with `--device cuda` also peak CUDA memory), then recall@k, MRR@10,
nDCG@10 of validation.jsonl over validation_corpus.jsonl: both backbones embedded by the same code
(ST's `encode` is checked against it), scored by `automodel.core.training.retrieval_metrics`.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _trainer_compare as compare

ASSETS = compare.ROOT / "examples" / "retrieval" / "assets"
RUNS = ("st", "ours")
RECALL_AT = (1, 5, 10)
PAIRS = compare.Measure(  # query-positive pairs: the queries of a step
    "pairs", "pairs", "query-positive pairs", "pair", 1,
    "{pairs_per_s:.1f} pairs/s ({pairs_per_s_step_only:.1f} step only)",
)  # fmt: skip


def evaluate(backbone, spec: dict) -> tuple[dict, object]:
    """Retrieval metrics of the trained backbone (the same code for both runs), and its query
    embeddings."""
    import torch

    from automodel.core.data import TextCollator, retrieval_eval_set
    from automodel.core.models import BiEncoder, load_tokenizer
    from automodel.core.training import retrieval_metrics

    held_out = retrieval_eval_set(spec["validation"], spec["validation_corpus"])
    tokenizer = load_tokenizer(spec["model_config"])
    encoder = BiEncoder(backbone, pooling="mean", normalize=True).eval()

    @torch.no_grad()
    def embed(texts: list[str], prefix: str) -> torch.Tensor:
        collate = TextCollator(tokenizer, spec["max_length"], prefix)
        chunks = [collate(texts[i : i + 64]) for i in range(0, len(texts), 64)]
        return torch.cat([encoder.encode({k: v.to(spec["device"]) for k, v in c.items()}) for c in chunks])  # fmt: skip

    queries = embed(held_out.queries, spec["query_prefix"])
    corpus = embed(held_out.corpus, spec["passage_prefix"])
    ranked = (queries @ corpus.T).topk(max(10, *RECALL_AT), dim=1).indices
    return retrieval_metrics(ranked, held_out.relevant, RECALL_AT), queries


def describe(optimizer) -> str:
    defaults = optimizer.defaults
    return f"{type(optimizer).__name__}(fused={defaults.get('fused')}, foreach={defaults.get('foreach')})"  # fmt: skip


def finish(spec: dict, result: dict, backbone) -> tuple[dict, object]:
    """Peak CUDA memory (on cuda), then the evaluation: after ru_maxrss was read."""
    import torch

    if spec["device"] == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    start = time.perf_counter()
    result["eval"], queries = evaluate(backbone, spec)
    result["eval_s"] = time.perf_counter() - start
    return result | {"attn_implementation": backbone.config._attn_implementation}, queries


def child_st(spec: dict) -> dict:
    import datasets
    import sentence_transformers
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Arguments
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.models import Normalize, Pooling, Transformer
    from torch.utils.data import SequentialSampler

    from automodel.core.data import retrieval_dataset, retrieval_eval_set

    t0 = time.perf_counter()  # after the imports, as the recipe's setup_s
    transformer = Transformer(spec["model_config"], max_seq_length=spec["max_length"])
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device=spec["device"])
    rows = retrieval_dataset(spec["data"], num_negatives=1)  # the recipe's items, in order
    rows = [rows[i] for i in range(len(rows))]  # {"query", "passages": [positive, negative]}
    columns = {"anchor": [r["query"] for r in rows], "positive": [r["passages"][0] for r in rows]}
    columns["negative"] = [r["passages"][1] for r in rows]
    hp, passage = spec["hp"], spec["passage_prefix"]

    def sequential(dataset, **kwargs):  # ST's default batch sampler, without its shuffling
        return DefaultBatchSampler(SequentialSampler(dataset), **kwargs)

    run = compare.TrainerRun(trainer=None, grad_acc=1, head={})
    args = Arguments(
        output_dir=tempfile.mkdtemp(prefix="st_trainer_"), use_cpu=spec["device"] == "cpu",
        per_device_train_batch_size=spec["local_batch"], max_steps=spec["steps"],
        learning_rate=hp["lr"], lr_scheduler_type="linear", warmup_steps=0,  # ST's defaults
        weight_decay=hp["weight_decay"], adam_beta1=hp["betas"][0], adam_beta2=hp["betas"][1],
        adam_epsilon=1e-8, max_grad_norm=hp["max_grad_norm"], seed=spec["seed"],
        **({"optim": spec["st_optim"]} if spec["st_optim"] else {}), bf16=False, fp16=False,
        prompts={"anchor": spec["query_prefix"], "positive": passage, "negative": passage},
        batch_sampler=sequential, dataloader_drop_last=True, dataloader_num_workers=0,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=True,
    )  # fmt: skip
    loss = MultipleNegativesRankingLoss(model, scale=1.0 / spec["temperature"])
    run.trainer = trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_dict(columns), loss=loss,
        callbacks=[compare.step_timer(run)],
    )  # fmt: skip
    setup_s = time.perf_counter() - t0
    start = time.perf_counter()
    trainer.train()
    run.head = {"sentence_transformers": sentence_transformers.__version__, "setup_s": setup_s}
    run.head["loop_s"] = time.perf_counter() - start
    run.head["optimizer"] = f"{args.optim.value}: {describe(trainer.optimizer.optimizer)}"
    result = run.result(spec, PAIRS, step_pairs=[spec["local_batch"]] * len(run.ends))
    result, queries = finish(spec, result, transformer.auto_model)
    # ST's own encode of the held-out queries against the shared evaluation's embeddings
    texts = retrieval_eval_set(spec["validation"], spec["validation_corpus"]).queries
    own = model.encode(texts, prompt=spec["query_prefix"], convert_to_tensor=True)
    result["st_encode_max_abs_diff"] = float((own.to(queries.device) - queries).abs().max())
    return result


def child_ours(spec: dict) -> dict:
    from automodel.recipes.retrieval.bi_encoder import SECTIONS, BiEncoderRecipe

    run_dir = Path(tempfile.mkdtemp(prefix="ours_bi_encoder_"))
    folder = spec["model_config"]
    tokenizer = {"_target_": "automodel.core.models.load_tokenizer", "path_or_name": folder}
    dataset = {"_target_": "automodel.core.data.retrieval_dataset", "num_negatives": 1}
    cfg = compare.recipe_config(
        spec, run_dir, model_target="", local_batch=spec["local_batch"],
        data={"tokenizer": tokenizer, "dataset": dataset | {"path": spec["data"]}},
    )  # fmt: skip
    del cfg["loss_fn"]  # the recipe's loss is InfoNCE, set by `bi_encoder:`
    cfg["model"] = {
        "_target_": "automodel.core.models.AutoModel.from_pretrained",
        "pretrained_model_name_or_path": folder,
    }
    cfg["bi_encoder"] = {
        "pooling": "mean", "temperature": spec["temperature"],
        "query_prefix": spec["query_prefix"], "passage_prefix": spec["passage_prefix"],
        "query_max_length": spec["max_length"], "passage_max_length": spec["max_length"],
    }  # fmt: skip
    cfg["distributed"]["device"] = spec["device"]
    run = compare.run_recipe(BiEncoderRecipe, SECTIONS, cfg, run_dir)
    result = run.result(spec, PAIRS, step_pairs=[spec["local_batch"]] * len(run.rows))
    result["optimizer"] = f"recipe: {describe(run.recipe.optimizer)}"
    return finish(spec, result, run.recipe.unwrapped)[0]


def build_model(args, folder: Path) -> None:
    """The tiny BERT with `--seed`'s initial weights, saved with the tokenizer for both runs."""
    from automodel.core.models import AutoModel, load_tokenizer

    names = ("hidden_dropout_prob", "attention_probs_dropout_prob")
    dropout = {} if args.dropout is None else dict.fromkeys(names, args.dropout)
    config = ASSETS / "tiny_bert" / "config.json"
    AutoModel.from_config(config, seed=args.seed, **dropout).save_pretrained(folder)
    load_tokenizer(ASSETS / "tokenizer").save_pretrained(folder)


def fmt_quality(results: dict) -> str:
    """Whole-process wall time, its parts (start-up: interpreter, imports, model, data, trainer;
    the training loop; the evaluation), peak memory and the retrieval metrics."""
    head = f"{'run':<5} {'wall s':>7} {'start s':>7} {'loop s':>7} {'eval s':>6} {'peak MiB':>8}"
    lines = [head + "".join(f" {k:>9}" for k in next(iter(results.values()))["eval"])]
    lines.insert(1, "-" * len(lines[0]))
    for name, r in results.items():
        wall, loop = r["process_wall_s"], r["loop_s"]
        peak = r.get("peak_cuda_mib", r["peak_rss_mib"])
        line = f"{name:<5} {wall:>7.1f} {wall - loop - r['eval_s']:>7.1f} {loop:>7.1f}"
        line += f" {r['eval_s']:>6.1f} {peak:>8.0f}"
        lines.append(line + "".join(f" {v:>9.4f}" for v in r["eval"].values()))
    return "\n".join(lines + [f"{name}: {r['optimizer']}" for name, r in results.items()])


def goals(attempts: dict, results: dict, recall_tolerance: float) -> dict:
    """The product's goals (median rates; each run's repeats give the same metrics), and how far
    the logged losses of st and ours are apart (~1e-5 with `--dropout 0`)."""
    st, ours = results["st"], results["ours"]
    losses = [(a, b) for s_, o in zip(attempts["st"], attempts["ours"], strict=True)
              for a, b in zip(s_["losses"], o["losses"], strict=True)]  # fmt: skip
    memory = "peak_cuda_mib" if "peak_cuda_mib" in st else "peak_rss_mib"
    speed = ours["median_pairs_per_s"] / st["median_pairs_per_s"]
    recall = ours["eval"]["recall@10"] - st["eval"]["recall@10"]
    return {
        "median_pairs_per_s_ours_over_st": speed,
        "at_least_as_fast": speed >= 1.0,
        f"{memory}_ours_minus_st": ours[memory] - st[memory],
        "no_more_memory": ours[memory] <= st[memory],
        "recall@10_ours_minus_st": recall,
        "same_recall": abs(recall) <= recall_tolerance,
        "mrr@10_ours_minus_st": ours["eval"]["mrr@10"] - st["eval"]["mrr@10"],
        "max_abs_loss_diff": max(abs(a - b) for a, b in losses),
    }


def main(argv: list[str] | None = None) -> int:
    p = compare.parser(__doc__, RUNS, steps=150)
    p.set_defaults(threads=1, repeats=3)
    p.add_argument("--smoke", action="store_true", help="12 steps, 1 repeat: a quick check")
    p.add_argument("--batch", type=int, default=16, help="queries per step (one hard negative)")
    p.add_argument("--max-length", type=int, default=48, help="tokens, queries and passages")
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--dropout", type=float, help="override the config's dropout (both runs)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--st-optim", help="transformers `optim` for st (default: its default)")
    p.add_argument("--recall-tolerance", type=float, default=0.02, help="|recall@10 difference|")
    compare.add_optimizer_args(p, lr=1e-3, lr_warmup=0, min_lr=0.0)
    p.set_defaults(betas=(0.9, 0.999), weight_decay=0.0, lr_style="linear")
    default_out = compare.ROOT / "benchmarks/results/bi_encoder_vs_sentence_transformers.json"
    compare.add_output_args(p, RUNS, out=default_out)
    args = p.parse_args(argv)

    if args.child:
        return compare.child_main(args, {"st": child_st, "ours": child_ours})
    if args.lr_style != "linear" or args.lr_warmup or args.min_lr:
        raise SystemExit("st is set to transformers' linear decay to 0 without warmup")
    if args.smoke:
        args.steps, args.repeats, args.timing_warmup = 12, 1, 2
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bi_encoder_vs_st_"))
    build_model(args, work / "model")
    spec = compare.make_spec(
        args, model_config=str(work / "model"), data=str(ASSETS / "train.jsonl"),
        validation=str(ASSETS / "validation.jsonl"),
        validation_corpus=str(ASSETS / "validation_corpus.jsonl"),
        local_batch=args.batch, grad_acc=1, max_length=args.max_length, query_prefix="query: ",
        passage_prefix="passage: ", temperature=args.temperature, device=args.device,
        st_optim=args.st_optim,
    )  # fmt: skip
    spec_path, model_cfg = compare.write_spec(work, spec)
    print(
        f"work dir {work}\nmodel: bert, {model_cfg['num_hidden_layers']} layers, hidden "
        f"{model_cfg['hidden_size']}, dropout {model_cfg['hidden_dropout_prob']}; batch "
        f"{args.batch} queries x (1 positive + 1 hard negative), {args.steps} steps, "
        f"{args.threads} thread(s), {args.device}", flush=True,
    )  # fmt: skip

    attempts = compare.run_alternated(__file__, args, spec_path, work, PAIRS)
    also = ("peak_rss_mib", "process_wall_s", "load_avg_after")
    results = compare.best_repeats(attempts, PAIRS, also=also)
    print()
    print(compare.fmt_table(results, PAIRS, width=5, base_run="st"))
    print(compare.fmt_repeats(results, PAIRS, width=5, step_only=True, base_run="st"))
    print("\nwall, peak memory (RSS, or CUDA on cuda) and retrieval after training:")
    print(fmt_quality(results))
    if "st" in results:
        print(f"ST encode vs the shared embedding: {results['st']['st_encode_max_abs_diff']:.1e}")
    print("\nInfoNCE loss per step:")
    print(compare.fmt_losses(results, every=max(1, args.steps // 10), diff=False))
    both = set(RUNS) <= results.keys()
    checks = goals(attempts, results, args.recall_tolerance) if both else {}
    deterministic = {n: all(r["eval"] == rs[0]["eval"] for r in rs) for n, rs in attempts.items()}
    print(f"\ngoals: {json.dumps(checks)}\nrepeats give the same metrics: {deterministic}")
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")
    loads = [r["load_avg_after"][0] for rs in attempts.values() for r in rs]
    compare.write_report(
        args.out, spec=spec, model_config=model_cfg, results=results, goals=checks,
        repeats_same_metrics=deterministic, benchmark_wall_s=time.perf_counter() - started,
        load_avg_1min_after_runs={"min": min(loads), "median": statistics.median(loads)},
        ratios_vs_st=compare.ratios_vs_hf(results, PAIRS.rates, base_run="st"),
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
