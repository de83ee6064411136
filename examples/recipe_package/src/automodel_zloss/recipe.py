"""`automodel zloss llm`: fine-tune a causal LM with cross-entropy plus a z-loss on the answers.

The z-loss (PaLM) adds `coeff * logsumexp(logits)^2` per label token, keeping the softmax
normaliser near 1 for stable low-precision training. Everything else (processes, FSDP2/DDP,
LoRA, checkpoints and exact resume, preemption, metrics) comes from automodel.recipes' shared
parts; this file only says how a batch becomes a loss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from automodel.checkpoint import HF_WEIGHTS, PEFT_ADAPTER
from automodel.core.config import ConfigNode, Section, recipe_main
from automodel.core.losses import IGNORE_INDEX, MaskedCrossEntropy, count_label_tokens, shift_labels
from automodel.core.optim import build_optimizer
from automodel.core.training import GlobalRngState
from automodel.distributed import global_label_tokens
from automodel.recipes import (
    CHECKPOINT_SECTIONS,
    LOADER_SECTIONS,
    MODEL_SECTIONS,
    OPTIMIZER_SECTIONS,
    RUN_SECTIONS,
    ClipGradNorm,
    OptimizerStep,
    Telemetry,
    adapter_extras_writer,
    build_lora_config,
    build_model,
    build_scheduler,
    checkpoint_if_due,
    hf_extras_writer,
    is_complete,
    prepare_model,
    read_section,
    restore_training_state,
    shard_model,
    shutdown,
    start_run,
    training_session,
    validate,
)
from automodel.recipes.llm import LM_SECTIONS, build_loaders, build_tokenizer, real_tokens


@dataclass(frozen=True)
class ZLoss:
    """`zloss:` the weight of the z-loss term."""

    coeff: float = 1e-4


SECTIONS = {
    **RUN_SECTIONS,
    **MODEL_SECTIONS,
    **LM_SECTIONS,
    **LOADER_SECTIONS,
    **OPTIMIZER_SECTIONS,
    **CHECKPOINT_SECTIONS,
    "zloss": Section(keys_of=ZLoss),
}


def losses(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], num_label_tokens: int, coeff: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE + z-loss, CE) of one micro-batch, each a sum over label tokens / `num_label_tokens`."""
    labels = batch.pop("labels")
    logits = model(**batch, use_cache=False).logits
    cross_entropy = MaskedCrossEntropy()(logits, labels, num_label_tokens)
    log_z = torch.logsumexp(logits.float(), dim=-1)[labels != IGNORE_INDEX]
    return cross_entropy + coeff * log_z.pow(2).sum() / num_label_tokens, cross_entropy


def train(cfg: ConfigNode) -> None:
    """Set everything up with the shared parts, then the training loop."""
    coeff = read_section(cfg, "zloss", ZLoss).coeff
    lora = build_lora_config(cfg)
    weights = HF_WEIGHTS if lora is None else PEFT_ADAPTER
    run = start_run(cfg, default_run_dir="runs/zloss", weights_format=weights)
    steps, parallel = run.step_scheduler, run.parallel
    tokenizer = build_tokenizer(cfg)
    model = prepare_model(build_model(cfg), run, lora=lora)
    extras = hf_extras_writer if lora is None else adapter_extras_writer
    write_extras = extras(model, cfg, tokenizer)
    placed = shard_model(model, run)
    shard = (parallel.dp_rank, parallel.dp_size)
    _, loader, val_loader = build_loaders(cfg, tokenizer, steps.local_batch_size, run.seed, *shard)
    optimizer = build_optimizer(model, cfg.optimizer)
    lr_scheduler = build_scheduler(cfg, optimizer, steps.total_steps(len(loader)))
    telemetry = Telemetry(
        run.run_dir, run.logging, cfg, steps.total_steps(len(loader)), started=run.started
    )
    state: dict[str, Any] = {
        "optimizer": optimizer,
        "optim_states": {"lr_scheduler": lr_scheduler},
        "train_states": {
            "step_scheduler": steps,
            "dataloader": loader,
            "rng": GlobalRngState(),
            "metrics": telemetry,
        },
    }
    restore_training_state(run, model, telemetry, **state)
    max_norm = read_section(cfg, "clip_grad_norm", ClipGradNorm).max_norm
    optimizer_step = OptimizerStep(model, optimizer, lr_scheduler, parallel, max_norm)

    def on_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(run.device) for k, v in batch.items()}

    def validation_totals(batches: Any) -> tuple[float, int]:
        total, tokens = 0.0, 0
        for batch in batches:
            batch = on_device({**batch, "labels": shift_labels(batch["labels"])})
            count = int(count_label_tokens(batch["labels"]))
            total += float(losses(placed, batch, max(count, 1), coeff)[1]) * count
            tokens += count
        return total, tokens

    def save() -> None:
        run.checkpointer.save(
            steps.epoch, steps.step, model=model, write_extras=write_extras, **state
        )

    def run_validation() -> None:
        lr = optimizer.param_groups[0]["lr"]
        validate(placed, val_loader, validation_totals, parallel, telemetry, steps, lr)

    with training_session(run, telemetry):
        if is_complete(run):
            return
        if val_loader is not None and run.restore_path is None:
            run_validation()  # the starting point
        placed.train()
        for micro_batches in steps.steps(loader):
            started = time.perf_counter()
            batches = [{**b, "labels": shift_labels(b["labels"])} for b in micro_batches]
            local = sum(int(count_label_tokens(b["labels"])) for b in batches)
            num_label_tokens = global_label_tokens(local, parallel.group)
            ce_sum = torch.zeros(())
            for i, batch in enumerate(batches):
                with parallel.micro_batch(placed, last=i == len(batches) - 1):
                    loss, ce = losses(placed, on_device(batch), num_label_tokens, coeff)
                    (loss * parallel.averaged_over).backward()
                ce_sum += ce.detach().cpu()
            tokens = sum(real_tokens(b, tokenizer.pad_token_id) for b in batches)
            sample = optimizer_step(steps, ce_sum, tokens, num_label_tokens, started)
            telemetry.log_train(sample, show=steps.is_log_step)
            if steps.is_val_step and val_loader is not None:
                run_validation()
            if checkpoint_if_due(run, save):
                return


def run(cfg: ConfigNode) -> None:
    """Train, then free every model and end the process group (also after a failure)."""
    finished = False
    try:
        train(cfg)
        finished = True
    finally:
        shutdown(barrier=finished)


def main(argv: list[str] | None = None) -> int:
    """Fine-tune a causal LM with cross-entropy plus a z-loss (logits kept near-normalised)."""
    return recipe_main(argv, sections=SECTIONS, run=run)
