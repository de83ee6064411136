"""The GPU suite's training items: the benchmark recipe on a Llama-3.2-1B shape (full fine-tune)
against `transformers.Trainer` on the same model, batch and sequence length, alternated in one
process; and the recipe on a Llama-3.1-8B shape with LoRA.

The recipe runs in-process through `automodel.recipes.llm.benchmark.main` with the overrides of
`fsdp2_recipe.py` (FSDP2 on one GPU, bf16 compute, float32 parameters and gradient reduction, the
fused linear cross-entropy, synthetic rows with every token real). The Trainer side reuses
`_trainer_compare.train_with_trainer` (the optimizer and LR schedule built by automodel from the
same config values), with `bf16=True` (autocast over float32 parameters) and the model's own
loss. Both sides time a step from its start to the end of the optimizer step, synchronising the
GPU at both ends, and summarise the median of the steps after the warm-up.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from pathlib import Path
from typing import Any

import _trainer_compare as compare
import fsdp2_recipe
from _gpu_common import Context, row

BENCH = compare.ROOT / "examples/llm_benchmark"
MODEL_1B = BENCH / "assets/llama3_2_1b"
SEED = 1234
TOKENS = compare.Measure(
    rate="tokens", counted="tokens", label="tokens", short="tok", digits=0, progress=""
)
# (rows per micro-batch, micro-batches per step, sequence length, steps, warm-up steps)
SHAPES = {
    "1b": {"gpu": (2, 2, 4096, 9, 3), "smoke": (2, 2, 64, 3, 1)},
    "8b_lora": {"gpu": (2, 1, 4096, 6, 2), "smoke": (2, 1, 64, 3, 1)},
}
LORA = "{_target_: automodel.peft.LoraConfig, match_all_linear: true, dim: 16, alpha: 32}"


def _shape(ctx: Context, name: str) -> tuple[int, int, int, int, int]:
    """The batch, sequence length and steps of `name` on a GPU or under --smoke."""
    return SHAPES[name]["smoke" if ctx.smoke else "gpu"]


def _free(ctx: Context) -> None:
    """Drop what the last run left, so the next one's peak memory is its own."""
    gc.collect()
    if not ctx.smoke:
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_recipe(ctx: Context, config: Path, shape: str, tag: str, *flags: str) -> dict[str, Any]:
    """One `benchmark llm` run in this process; its summary (benchmark.json)."""
    import yaml

    from automodel.recipes.llm.benchmark import main

    local, acc, seq, steps, warmup = _shape(ctx, shape)
    argv = ["--local-batch-size", str(local), "--grad-acc", str(acc), "--seq-len", str(seq)]
    argv += ["--steps", str(steps), "--warmup", str(warmup), "--reshard-after-forward", "false"]
    args = fsdp2_recipe.parse_args([*argv, *flags, *(["--smoke"] if ctx.smoke else [])])
    run_dir = ctx.work / tag
    model_dir = compare.ROOT / yaml.safe_load(config.read_text())["model"]["config"]
    extra = [f"--model.config={model_dir}"]  # relative to the repository, not to the cwd
    if not ctx.smoke:
        extra.append("--+model.init_device=cuda")  # random init on the GPU: seconds
    if shape == "8b_lora":
        extra.append(f"--+peft={LORA}")
    _free(ctx)
    code = main(["-c", str(config), *fsdp2_recipe.overrides(args, run_dir, 1), *extra])
    if code != 0:
        raise RuntimeError(f"benchmark llm -c {config.name} exited {code} (see the log above)")
    return json.loads((run_dir / "benchmark.json").read_text())


def _median(summary: dict[str, Any], key: str) -> float | None:
    """The median of one of the summary's statistics (None where it is not known)."""
    return (summary.get(key) or {}).get("median")


def _mid(values: list[float | None]) -> float | None:
    """The median of the rounds' values; None if there are none or one is not known."""
    return None if not values or None in values else statistics.median(values)


class SyntheticRows:
    """`rows` rows of `seq` random token ids (a seeded generator); labels are the ids."""

    def __init__(self, vocab: int, seq: int, rows: int, seed: int):
        import torch

        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (rows, seq), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _stack(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The batch of equal-length rows."""
    import torch

    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def run_trainer(ctx: Context, config: Path, tag: str) -> dict[str, Any]:
    """The 1B configuration through `transformers.Trainer`: its rates and peak memory."""
    import torch
    import yaml

    from automodel.core.models import AutoModelForCausalLM

    local, acc, seq, steps, warmup = _shape(ctx, "1b")
    cfg = yaml.safe_load(config.read_text())
    opt = cfg["optimizer"]
    spec = {
        "steps": steps,
        "grad_acc": acc,
        "local_batch": local,
        "seed": SEED,
        "warmup_steps_excluded": warmup,
        "hp": {
            "lr": float(opt["lr"]),
            "betas": opt["betas"],
            "weight_decay": opt["weight_decay"],
            "warmup_steps": 0,
            "style": "constant",
            "min_lr": 0.0,
            "max_grad_norm": cfg["clip_grad_norm"]["max_norm"],
        },
    }
    _free(ctx)
    started = time.perf_counter()
    shape = fsdp2_recipe.SMOKE if ctx.smoke else {}
    model = AutoModelForCausalLM.from_config(
        MODEL_1B,
        seed=SEED,
        attn_implementation=cfg["model"]["attn_implementation"],
        init_device=None if ctx.smoke else "cuda",
        **shape,
    )
    rows = SyntheticRows(model.config.vocab_size, seq, steps * local * acc, SEED)
    counter = compare.CountingCollate(_stack, pad_token_id=-1)  # no padding: every id counts
    run = compare.train_with_trainer(
        spec,
        model,
        rows,
        counter,
        started,
        prefix=f"{tag}_",
        sync=None if ctx.smoke else torch.cuda.synchronize,
        output_dir=str(ctx.work / tag),
        use_cpu=ctx.smoke,
        bf16=True,
    )
    result = run.result(spec, TOKENS, step_tokens=run.per_step(counter.tokens))
    result["peak_memory_gib"] = (
        None if ctx.smoke else torch.cuda.max_memory_allocated() / 2**30
    )  # CPU: see peak_rss_mib
    del run, model
    return result


def llm_1b(ctx: Context) -> dict[str, Any]:
    """Tokens/s and MFU of the 1B full fine-tune, and the ratio to the Trainer, alternated.

    A run that fails is recorded in `errors` and the others go on, so that a Trainer that runs
    out of memory, say, costs none of our own figures.
    """
    config = BENCH / "llama3_2_1b.yaml"
    rounds = 1 if ctx.smoke else 2
    ours: list[dict[str, Any]] = []
    hf: list[dict[str, Any]] = []
    errors: list[str] = []
    for r in range(rounds):  # ours first, then the Trainer first: load and heat spread alike
        for side in ("ours", "hf") if r % 2 == 0 else ("hf", "ours"):
            try:
                if side == "ours":
                    ours.append(run_recipe(ctx, config, "1b", f"ours_1b_{r}"))
                else:
                    hf.append(run_trainer(ctx, config, f"hf_1b_{r}"))
            except Exception as e:
                errors.append(f"{side} round {r}: {type(e).__name__}: {e}")
    _free(ctx)
    if not ours and not hf:
        raise RuntimeError("; ".join(errors))
    ours_tps = _mid([_median(s, "tokens_per_s_per_gpu") for s in ours])
    mfu = _mid([_median(s, "mfu") for s in ours])
    hf_tps = _mid([r["tokens_per_s_median_step"] for r in hf])
    ratio = ours_tps / hf_tps if ours_tps and hf_tps else None
    local, acc, seq, _, _ = _shape(ctx, "1b")
    return {
        "rows": [
            row("ours: tokens/s per GPU", ours_tps, "tok/s"),
            row("ours: MFU", mfu, "%", ">= 45%", None if mfu is None else mfu >= 0.45),
            row(
                "ours: TFLOP/s per GPU", _mid([_median(s, "tflops_per_gpu") for s in ours]), "TF/s"
            ),
            row("Trainer: tokens/s per GPU", hf_tps, "tok/s"),
            row(
                "ours / Trainer, tokens/s",
                ratio,
                "x",
                ">= 1.3x",
                None if ratio is None else ratio >= 1.3,
            ),
            row("ours: peak memory", _mid([s["peak_memory_gib"] for s in ours]), "GiB"),
            row("Trainer: peak memory", _mid([r["peak_memory_gib"] for r in hf]), "GiB"),
        ],
        "errors": errors,
        "details": {
            "ours": ours,
            "trainer": [{k: v for k, v in r.items() if k != "run_dir"} for r in hf],
            "rounds": rounds,
            "rows_per_micro_batch": local,
            "micro_batches_per_step": acc,
            "seq_length": seq,
        },
    }


def lora_8b(ctx: Context) -> dict[str, Any]:
    """Tokens/s and TFLOP/s per GPU of LoRA (rank 16, every linear layer) on the 8B shape."""
    summary = run_recipe(
        ctx, BENCH / "llama3_1_8b.yaml", "8b_lora", "ours_8b_lora", "--activation-checkpointing"
    )
    _free(ctx)
    tflops, mfu = _median(summary, "tflops_per_gpu"), _median(summary, "mfu")
    return {
        "rows": [
            row("tokens/s per GPU", _median(summary, "tokens_per_s_per_gpu"), "tok/s"),
            row(
                "TFLOP/s per GPU",
                tflops,
                "TF/s",
                ">= 400 (H100)",
                None if tflops is None else tflops >= 400,
            ),
            row("MFU", mfu, "%"),
            row("peak memory", summary["peak_memory_gib"], "GiB"),
        ],
        "details": {"summary": summary},
    }
