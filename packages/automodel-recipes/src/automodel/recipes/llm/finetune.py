"""Fine-tune (or pre-train) any Hugging Face causal LM from one YAML file.

automodel finetune llm -c examples/llm_finetune/tiny_sft.yaml
automodel pretrain llm -c examples/llm_pretrain/tiny_pretrain.yaml
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from automodel.checkpoint import HF_WEIGHTS, PEFT_ADAPTER
from automodel.core.config import ConfigNode, recipe_main
from automodel.core.losses import count_label_tokens, shift_labels
from automodel.core.training import (
    GlobalRngState,
    peak_flops_for_device,
)

from .. import (
    CHECKPOINT_SECTIONS,
    LOADER_SECTIONS,
    MODEL_SECTIONS,
    OPTIMIZER_SECTIONS,
    RUN_SECTIONS,
    MoeStep,
    PackedSequence,
    RunViews,
    adapter_extras_writer,
    build_lora_config,
    build_model,
    build_training,
    checkpoint_if_due,
    hf_extras_writer,
    is_complete,
    model_flops_per_token,
    preflight,
    prepare_model,
    read_moe,
    read_section,
    restore_training_state,
    run_then_shutdown,
    save_merged_model,
    shard_model,
    start_run,
    training_session,
    validate,
)
from ._data import (
    LM_SECTIONS,
    build_loaders,
    build_loss,
    build_tokenizer,
    check_documents,
    check_rows,
    pad_id,
    real_tokens,
)
from ._fused_loss import is_fused, with_fused_loss
from ._pipeline import Pipeline, check_pipeline

log = logging.getLogger("automodel.recipes.llm")

SECTIONS = {
    **RUN_SECTIONS,
    **MODEL_SECTIONS,
    **LM_SECTIONS,
    **LOADER_SECTIONS,
    **OPTIMIZER_SECTIONS,
    **CHECKPOINT_SECTIONS,
}


class FinetuneRecipeForCausalLM(RunViews):
    """Next-token-prediction training of a HF causal LM: `setup()`, then the train/validation loop."""

    def __init__(self, cfg: ConfigNode):
        self.cfg = cfg

    def setup(self) -> None:
        """Build every piece from the config, in the order infrastructure must be applied."""
        cfg = self.cfg
        self.lora = build_lora_config(cfg)
        weights = PEFT_ADAPTER if self.lora is not None else HF_WEIGHTS
        self.run = ctx = start_run(cfg, default_run_dir="runs/llm", weights_format=weights)
        check_rows(cfg)
        check_pipeline(cfg, ctx.distributed)
        # saved beside the model; None for token ids without a tokenizer (build_tokenizer)
        self.tokenizer = self.preprocessor = build_tokenizer(cfg, optional=True)
        self.loss_fn = build_loss(cfg)
        moe = read_moe(cfg, ctx.distributed.ep_size)
        model = build_model(cfg)
        local, cp_size = self.step_scheduler.local_batch_size, ctx.distributed.cp_size
        check_documents(cfg, model, local, cp_size)  # packed or padding-free rows
        packed = read_section(cfg, "packed_sequence", PackedSequence).packed_sequence_size
        seq_len = packed or cfg.get("dataset.seq_length") or 2048
        self.flops_per_token = model_flops_per_token(model, seq_len)  # whole, without adapters
        model = prepare_model(model, ctx, moe=moe, lora=self.lora, loss_fn=self.loss_fn)
        self.unwrapped = model  # FSDP2 shards it in place, DDP wraps it
        write_extras = adapter_extras_writer if self.lora is not None else hf_extras_writer
        processors = [self.tokenizer] if self.tokenizer is not None else []
        self.write_hf_extras = write_extras(model, cfg, *processors)  # while it is whole
        self.moe = MoeStep(model, moe, self.parallel)
        self.pipeline = None
        if ctx.distributed.pp_size > 1:  # this rank keeps its stage (FSDP2 over its dp ranks)
            grad_acc, pad = self.step_scheduler.grad_acc_steps, pad_id(self.tokenizer)
            fixed = packed or cfg.get("dataset.seq_length")  # else each step's own length
            self.pipeline = Pipeline(
                model, self.parallel, self.loss_fn, grad_acc, fixed, pad, cfg, self.moe
            )
            model = self.unwrapped = self.pipeline.stage
        else:  # a fused loss runs inside the forward the strategy wraps (it reads the LM head)
            experts = self.moe.shard_experts(cfg)  # distributed.ep_size > 1: its experts
            model = shard_model(with_fused_loss(model, self.loss_fn), ctx, experts)
        self.model = model

        shard = (self.parallel.dp_rank, self.parallel.dp_size)  # each dp rank reads its shard
        self.train_set, self.train_loader, self.val_loader = build_loaders(
            cfg, self.tokenizer, local, ctx.seed, *shard
        )
        self.optimizer, self.lr_scheduler, self.telemetry, self.optimizer_step, total = (
            build_training(
                ctx, self.unwrapped, self.train_loader, self.moe,
                flops_per_token=self.flops_per_token,
                peak_flops=peak_flops_for_device() if self.device.type == "cuda" else None,
                tied_copies=self.pipeline.tied_copies if self.pipeline is not None else [],
            )
        )  # fmt: skip
        restore_training_state(ctx, self.unwrapped, self.telemetry, **self.training_state())
        efficiency = getattr(self.train_set, "efficiency", None)
        if efficiency is not None:
            log.info("packing efficiency: %.1f%% real tokens per slot", 100 * efficiency)
        params = sum(p.numel() for p in self.unwrapped.parameters()) / 1e6
        log.info(
            "model: %s, %.2fM parameters on %s; %d training steps",
            type(self.unwrapped).__name__, params, self.device, total,
        )  # fmt: skip

    def training_state(self) -> dict[str, Any]:
        """Everything besides the model that a checkpoint must hold to resume exactly."""
        return {
            "optimizer": self.optimizer,
            "optim_states": {"lr_scheduler": self.lr_scheduler},
            "train_states": {
                "step_scheduler": self.step_scheduler,
                "dataloader": self.train_loader,
                "rng": GlobalRngState(),
                "metrics": self.telemetry,
            },
        }

    def run_train_validation_loop(self) -> None:
        """Train until max_steps/num_epochs, validating and checkpointing on schedule."""
        merged_dir = self.run_dir / "merged_model"
        merge = self.checkpoint.save_merged_model
        with training_session(self.run, self.telemetry):
            if is_complete(self.run, outputs_pending=merge and not merged_dir.exists()):
                return
            if self.val_loader is not None and self.run.restore_path is None:
                self.validate()
            self.model.train()  # from_pretrained returns eval mode: dropout would be off on resume
            if self.train_steps() and merge:
                sharded = self.parallel.mesh is not None
                processors = [self.preprocessor] if self.preprocessor is not None else []
                save_merged_model(self.unwrapped, merged_dir, *processors, sharded=sharded)

    def train_steps(self) -> bool:
        """The training loop; False when a preemption signal stopped it early.

        Each step calls `self.forward_backward` and `self.optimizer_step`: kd.llm runs this loop
        with its own two (teacher and student forwards; the CE and KL parts in the metrics), the
        retrieval recipes with their own `forward_loss`, `count_targets` (queries, not label
        tokens) and `real_tokens`.
        """
        steps = self.step_scheduler
        for micro_batches in steps.steps(self.train_loader):
            start = time.perf_counter()
            self.run.fake_quant.at_step(steps.step)  # qat: on from its start_step
            micro_batches = [self.prepare(batch) for batch in micro_batches]
            if self.pipeline is not None:  # one length for the schedule, then split (cp)
                micro_batches = self.pipeline.even_out(micro_batches)
            # Exact normalisation: every token of the global batch (all micro-batches, all dp and
            # cp ranks) weighs the same; × their number undoes the averaging of FSDP2/DDP.
            # The counts are of host batches; their sum over the ranks stays on the device.
            local_tokens = sum(self.count_targets(b) for b in micro_batches)
            num_label_tokens = self.parallel.label_tokens(local_tokens)
            if self.pipeline is not None:  # the schedule runs every micro-batch of the step
                local = steps.local_batch_size
                loss_sum, tokens = self.pipeline.train_step(micro_batches, num_label_tokens, local)
            else:
                loss_sum, tokens = self.forward_backward(micro_batches, num_label_tokens)
            pending = self.optimizer_step(steps, loss_sum, tokens, num_label_tokens, start)
            saving = steps.is_ckpt_step or steps.is_last_step  # rows (and their checks) first
            self.telemetry.log_train(pending, show=steps.is_log_step, write=saving)
            if steps.is_val_step and self.val_loader is not None:
                self.validate()
            if checkpoint_if_due(self.run, self.save):
                return False
        return True

    def forward_backward(
        self, micro_batches: list[dict[str, torch.Tensor]], num_label_tokens: int | torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """Forward and backward of every micro-batch of a step: (loss sum, real tokens)."""
        loss_sum, tokens = torch.zeros((), device=self.device), 0
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            with self.parallel.micro_batch(self.model, last), self.moe.real_tokens_only(batch):
                loss = self.forward_loss(batch, num_label_tokens)
                aux = self.moe.aux_loss(len(micro_batches))  # MoE load balancing, if any
                ((loss if aux is None else loss + aux) * self.parallel.averaged_over).backward()
            loss_sum += loss.detach()
            tokens += self.real_tokens(batch)
        return loss_sum, tokens

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """What the step's loss is normalised by, in one micro-batch: its label tokens."""
        return int(count_label_tokens(batch["labels"]))

    def real_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """The micro-batch's tokens that are not padding, for throughput."""
        return real_tokens(batch, pad_id(self.tokenizer))

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Next-token targets, then this rank's part of the sequence (context parallel; with a
        pipeline, `Pipeline.even_out` splits a step's batches once they have one length)."""
        batch = {**batch, "labels": shift_labels(batch["labels"])}
        if self.pipeline is not None:
            return batch
        return self.parallel.split_sequence(batch, pad_id(self.tokenizer))

    def forward_loss(self, batch: dict[str, torch.Tensor], num_label_tokens: int) -> torch.Tensor:
        """Loss of one micro-batch (labels already shifted), normalised by the step's label tokens."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        labels = batch.pop("labels")
        if is_fused(self.loss_fn):  # self.model is (the parallelized) FusedLossModel
            return self.model(batch, labels, num_label_tokens)
        logits = self.model(**batch, use_cache=False).logits
        return self.loss_fn(logits, labels, num_label_tokens)

    def validate(self) -> float:
        """Mean per-token loss over the validation set (every rank's shard), to validation.jsonl."""
        lr = self.optimizer.param_groups[0]["lr"]
        return validate(
            self.model, self.val_loader, self.validation_totals, self.parallel, self.telemetry,
            self.step_scheduler, lr, self.moe,
        )  # fmt: skip

    def validation_totals(self, batches: Any) -> tuple[float, int]:
        """(summed per-token loss, label tokens) of this rank's validation batches."""
        if self.pipeline is not None:
            return self.pipeline.evaluate(batches, self.step_scheduler.local_batch_size)
        total_loss, total_tokens = 0.0, 0
        for batch in batches:
            batch = self.prepare(batch)
            tokens = int(count_label_tokens(batch["labels"]))
            loss = self.forward_loss(batch, tokens)  # on every rank: FSDP2 gathers are collective
            if tokens:
                total_loss += loss.item() * tokens
                total_tokens += tokens
        return total_loss, total_tokens

    def save(self) -> Any:
        """Checkpoint the run: HF model directory, optimizer, training state and resolved config."""
        steps = self.step_scheduler
        return self.checkpointer.save(
            steps.epoch, steps.step, model=self.unwrapped, write_extras=self.write_hf_extras,
            **self.training_state(),
        )  # fmt: skip


def run(cfg: ConfigNode) -> None:
    """Set up the recipe and train; then free sharded modules and end the process group."""
    recipe = FinetuneRecipeForCausalLM(cfg)
    run_then_shutdown(recipe, recipe.setup, recipe.run_train_validation_loop)


def check(cfg: ConfigNode) -> None:
    """Pre-flight checks that need no model: the shared ones and the pipeline's."""
    distributed = preflight(cfg)
    check_rows(cfg)
    check_pipeline(cfg, distributed)


def main(argv: list[str] | None = None) -> int:
    """Fine-tune a Hugging Face causal LM (SFT on QA, chat or instruction data)."""
    return recipe_main(argv, sections=SECTIONS, run=run, check=check)


def pretrain_main(argv: list[str] | None = None) -> int:
    """Pre-train a causal LM from random initialisation on plain text."""
    return recipe_main(argv, sections=SECTIONS, run=run, check=check)
