"""Fine-tune (or pre-train) any Hugging Face causal LM from one YAML file.

automodel finetune llm -c examples/llm_finetune/tiny_sft.yaml
automodel pretrain llm -c examples/llm_pretrain/tiny_pretrain.yaml
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from automodel.checkpoint import HF_WEIGHTS, PEFT_ADAPTER
from automodel.core.config import ConfigNode, Section, recipe_main
from automodel.core.data import build_dataloader
from automodel.core.logging import (
    MlflowLogger,
    WandbLogger,
    check_metric_loggers,
    setup_logging,
)
from automodel.core.losses import count_label_tokens, shift_labels
from automodel.core.optim import build_lr_scheduler, build_optimizer
from automodel.core.training import (
    GlobalRngState,
    MetricsSample,
    StepScheduler,
    clip_grad_norm,
    dense_decoder_flops_per_token,
    mfu,
    peak_flops_for_device,
    peak_memory_gib,
    set_seed,
)
from automodel.distributed import global_label_tokens

from . import _builders as build
from ._checkpointing import build_checkpointer, hf_extras_writer, restoring
from ._context_parallel import attend_across_ranks
from ._freeze import apply_freeze
from ._fused_loss import check_fused_loss, is_fused, with_fused_loss
from ._moe import MoeStep, apply_moe, read_moe
from ._parallel import read_distributed, setup_parallel, shutdown
from ._peft import adapter_extras_writer, apply_peft, build_lora_config, save_merged_model
from ._pipeline import Pipeline, check_pipeline
from ._preemption import PreemptionWatcher
from ._run_history import start_point
from ._sections import (
    Checkpoint,
    ClipGradNorm,
    Compile,
    Distributed,
    Freeze,
    Logging,
    Moe,
    PackedSequence,
    Rng,
    read_section,
)
from ._telemetry import Telemetry, real_tokens

log = logging.getLogger("automodel.recipes.llm")

_LOADER_ARGS = ("dataset", "batch_size", "dp_rank", "dp_size")
SECTIONS = {
    "step_scheduler": Section(required=True, keys_of=StepScheduler, provided=("dp_size",)),
    "model": Section(required=True, needs_target=True),
    "tokenizer": Section(needs_target=True),
    "dataset": Section(required=True, needs_target=True, provided=("tokenizer",)),
    "validation_dataset": Section(needs_target=True, provided=("tokenizer",)),
    "dataloader": Section(keys_of=build_dataloader, provided=_LOADER_ARGS),
    "validation_dataloader": Section(keys_of=build_dataloader, provided=_LOADER_ARGS),
    "packed_sequence": Section(keys_of=PackedSequence),
    "loss_fn": Section(needs_target=True),
    "optimizer": Section(required=True, needs_target=True, provided=("params",)),
    "lr_scheduler": Section(keys_of=build_lr_scheduler, provided=("optimizer", "total_steps")),
    "clip_grad_norm": Section(keys_of=ClipGradNorm),
    "checkpoint": Section(keys_of=Checkpoint),
    "rng": Section(keys_of=Rng),
    "compile": Section(keys_of=Compile),
    "freeze": Section(keys_of=Freeze),
    "peft": Section(needs_target=True),
    "moe": Section(keys_of=Moe),
    "distributed": Section(keys_of=Distributed),
    "logging": Section(keys_of=Logging),
    "wandb": Section(keys_of=WandbLogger, provided=("config",)),
    "mlflow": Section(keys_of=MlflowLogger, provided=("config",)),
}


class FinetuneRecipeForCausalLM:
    """Next-token-prediction training of a HF causal LM: `setup()`, then the train/validation loop."""

    def __init__(self, cfg: ConfigNode):
        self.cfg = cfg

    def setup(self) -> None:
        """Build every piece from the config, in the order infrastructure must be applied."""
        cfg = self.cfg
        seed = read_section(cfg, "rng", Rng).seed
        set_seed(seed)  # the same seed on every rank: identical initial weights
        distributed, dp_size = read_distributed(cfg)  # batch math first: no process group yet
        pipeline_len = check_pipeline(cfg, distributed)  # pp_size > 1: micro-batch length
        self.step_scheduler = build.build_step_scheduler(cfg, dp_size)
        logging_section = read_section(cfg, "logging", Logging)
        setup_logging(logging_section.level)  # first, so every set-up step is reported
        self.run_dir = Path(logging_section.run_dir)
        self.parallel = setup_parallel(cfg)  # process group, mesh, strategy
        self.device = self.parallel.device
        self.tokenizer = build.build_tokenizer(cfg)
        self.checkpoint = read_section(cfg, "checkpoint", Checkpoint)
        self.lora = build_lora_config(cfg)
        weights = PEFT_ADAPTER if self.lora is not None else HF_WEIGHTS
        self.checkpointer = build_checkpointer(
            self.checkpoint, self.run_dir, weights, self.parallel.pp_group
        )
        # Resume by default; a new start first moves an earlier run here aside (rank 0)
        self.restore_path = start_point(
            self.checkpointer, self.checkpoint.restore_from, self.run_dir
        )
        self.loss_fn = build.build_loss(cfg)
        check_fused_loss(cfg, self.loss_fn, distributed)
        model = build.build_model(cfg)
        attend_across_ranks(model, self.parallel.cp, cfg)  # cp_size > 1: the split sequence
        moe = read_moe(cfg, distributed.ep_size)
        if moe is not None:  # first: LoRA, the restore and sharding see the new blocks
            apply_moe(model, moe, cfg)
        if self.lora is not None:  # before the restore: a PEFT checkpoint holds the adapter only
            apply_peft(model, self.lora, cfg, self.loss_fn, self.device)
        # FP8 and QAT plug in here, before the restore, as their packages land.
        # Freeze first: an adapter checkpoint holds exactly the parameters left trainable.
        apply_freeze(model, read_section(cfg, "freeze", Freeze), cfg)
        if self.restore_path is not None:
            with restoring(self.restore_path):
                self.checkpointer.restore(self.restore_path, model=model)
        self.unwrapped = model  # FSDP2 shards it in place, DDP wraps it
        write_extras = adapter_extras_writer if self.lora is not None else hf_extras_writer
        self.write_hf_extras = write_extras(model, self.tokenizer, cfg)  # while it is whole
        self.moe = MoeStep(model, moe, self.parallel)
        self.pipeline = None
        if pipeline_len is not None:  # this rank keeps its stage (FSDP2 over its dp ranks)
            grad_acc, pad = self.step_scheduler.grad_acc_steps, self.tokenizer.pad_token_id
            self.pipeline = Pipeline(
                model, self.parallel, self.loss_fn, grad_acc, pipeline_len, pad, cfg
            )
            model = self.unwrapped = self.pipeline.stage
        else:
            experts = self.moe.shard_experts(cfg)  # distributed.ep_size > 1: its experts
            # A fused loss runs inside the forward the strategy wraps (it reads the LM head)
            model = self.parallel.shard(with_fused_loss(model, self.loss_fn), experts)
        options = read_section(cfg, "compile", Compile)
        if options.enabled:
            model = torch.compile(
                model, mode=options.mode, fullgraph=options.fullgraph, dynamic=options.dynamic
            )
        self.model = model

        pad = self.tokenizer.pad_token_id
        local = self.step_scheduler.local_batch_size
        shard = (self.parallel.dp_rank, self.parallel.dp_size)  # each dp rank reads its shard
        self.train_set = build.build_dataset(cfg, "dataset", self.tokenizer)
        self.train_loader = build.build_loader(
            cfg, "dataloader", self.train_set, local, seed, pad, *shard
        )
        self.val_loader = build.build_validation_loader(cfg, self.tokenizer, local, seed, *shard)
        self.optimizer = build_optimizer(self.unwrapped, cfg.optimizer)
        total = self.step_scheduler.total_steps(len(self.train_loader))
        self.lr_scheduler = build.build_scheduler(cfg, self.optimizer, total)
        self.max_grad_norm = read_section(cfg, "clip_grad_norm", ClipGradNorm).max_norm
        self.telemetry = Telemetry(self.run_dir, logging_section, cfg, total)
        if self.restore_path is not None:
            with restoring(self.restore_path):
                info = self.checkpointer.restore(
                    self.restore_path,
                    model=self.unwrapped,  # names the optimizer's parameters
                    load_weights=False,  # restored above, before placement
                    allow_world_size_change=True,  # data position and step counters convert
                    **self.training_state(),
                )
            self.telemetry.resume_at(self.step_scheduler.step)
            log.info(
                "resumed from %s at step %d (saved by %d process(es), now %d)",
                self.restore_path, self.step_scheduler.step, info.world_size,
                self.parallel.world_size,
            )  # fmt: skip
        self.preemption = PreemptionWatcher(self.checkpoint.preempt_signals)
        seq_len = read_section(cfg, "packed_sequence", PackedSequence).packed_sequence_size
        seq_len = seq_len or cfg.get("dataset.seq_length") or 2048
        self.flops_per_token = dense_decoder_flops_per_token(self.unwrapped.config, seq_len)
        self.peak_flops = peak_flops_for_device() if self.device.type == "cuda" else None
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
        steps = self.step_scheduler
        merged_dir = self.run_dir / "merged_model"
        merge = self.checkpoint.save_merged_model
        try:
            if steps.done and not (merge and not merged_dir.exists()):
                log.info(
                    "the run is complete at step %d (%s); nothing to do. To train on, raise "
                    "step_scheduler.max_steps; to start over, --+checkpoint.restore_from fresh",
                    steps.step, self.restore_path,
                )  # fmt: skip
                return
            if self.val_loader is not None and self.restore_path is None:
                self.validate()
            self.preemption.install()
            self.model.train()  # from_pretrained returns eval mode: dropout would be off on resume
            if self._train(steps) and merge:
                sharded = self.parallel.mesh is not None
                save_merged_model(self.unwrapped, self.tokenizer, merged_dir, sharded=sharded)
        finally:
            self.preemption.uninstall()
            self.checkpointer.close()
            self.telemetry.close()

    def _train(self, steps: StepScheduler) -> bool:
        """The training loop; False when a preemption signal stopped it early."""
        for micro_batches in steps.steps(self.train_loader):
            start = time.perf_counter()
            micro_batches = [self.prepare(batch) for batch in micro_batches]
            # Exact normalisation: every token of the global batch (all micro-batches, all dp and
            # cp ranks) weighs the same; × their number undoes the averaging of FSDP2/DDP.
            local_tokens = sum(int(count_label_tokens(b["labels"])) for b in micro_batches)
            num_label_tokens = global_label_tokens(local_tokens, self.parallel.group)
            if self.pipeline is not None:  # the schedule runs every micro-batch of the step
                local = self.step_scheduler.local_batch_size
                loss_sum, tokens = self.pipeline.train_step(micro_batches, num_label_tokens, local)
            else:
                loss_sum, tokens = self._forward_backward(micro_batches, num_label_tokens)
            self.moe.reduce_expert_grads()  # expert-parallel weights: FSDP2/DDP left them out
            grad_norm = clip_grad_norm(  # global: over every shard and pipeline stage
                self.unwrapped.parameters(), self.max_grad_norm, parts_group=self.parallel.pp_group,
                copies=self.pipeline.tied_copies if self.pipeline is not None else (),
            )  # fmt: skip
            sums = torch.stack([loss_sum.double().cpu(), torch.tensor(float(tokens))])
            loss_total, real_total = self.parallel.sum(sums).tolist()
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            extra = self.moe.after_optimizer_step()
            tps = real_total / (time.perf_counter() - start)  # every rank's tokens
            tps_per_gpu = tps / self.parallel.world_size
            self.telemetry.log_train(
                MetricsSample(
                    step=steps.step,
                    epoch=steps.epoch,
                    loss=loss_total,
                    lr=lr,
                    grad_norm=float(grad_norm),
                    mem=peak_memory_gib(self.device),
                    tps=tps,
                    tps_per_gpu=tps_per_gpu,
                    mfu=mfu(tps_per_gpu, self.flops_per_token, self.peak_flops),
                    num_label_tokens=int(num_label_tokens),
                    extra=extra,
                ),
                show=steps.is_log_step,
            )
            if steps.is_val_step and self.val_loader is not None:
                self.validate()
            preempted = self.preemption.agreed()  # every rank stops after the same step
            if (
                preempted
                or steps.is_ckpt_step
                or (steps.is_last_step and self.checkpoint.save_final)
            ):
                self.save()
            if preempted:
                log.warning(
                    "stopped by %s after step %d",
                    self.preemption.received or "a signal to another process", steps.step,
                )  # fmt: skip
                return False
        return True

    def _forward_backward(
        self, micro_batches: list[dict[str, torch.Tensor]], num_label_tokens: int
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
            tokens += real_tokens(batch, self.tokenizer.pad_token_id)
        return loss_sum, tokens

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Next-token targets, then this rank's part of the sequence (context parallel)."""
        batch = {**batch, "labels": shift_labels(batch["labels"])}
        return self.parallel.split_sequence(batch, self.tokenizer.pad_token_id)

    def forward_loss(self, batch: dict[str, torch.Tensor], num_label_tokens: int) -> torch.Tensor:
        """Loss of one micro-batch (labels already shifted), normalised by the step's label tokens."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        labels = batch.pop("labels")
        if is_fused(self.loss_fn):  # self.model is (the parallelized) FusedLossModel
            return self.model(batch, labels, num_label_tokens)
        logits = self.model(**batch, use_cache=False).logits
        return self.loss_fn(logits, labels, num_label_tokens)

    @torch.no_grad()
    def validate(self) -> float:
        """Mean per-token loss over the validation set (every rank's shard), to validation.jsonl."""
        self.model.eval()
        total_loss, total_tokens = 0.0, 0
        batches = self.telemetry.progress(self.val_loader, "validation")
        if self.pipeline is not None:
            local = self.step_scheduler.local_batch_size
            total_loss, total_tokens = self.pipeline.evaluate(batches, local)
            batches = []
        for batch in batches:
            batch = self.prepare(batch)
            tokens = int(count_label_tokens(batch["labels"]))
            loss = self.forward_loss(batch, tokens)  # on every rank: FSDP2 gathers are collective
            if tokens:
                total_loss += loss.item() * tokens
                total_tokens += tokens
        self.model.train()
        self.moe.forget_load()
        total_loss, total_tokens = self.parallel.sum(
            torch.tensor([total_loss, total_tokens])
        ).tolist()
        total_tokens = int(total_tokens)
        val_loss = total_loss / max(total_tokens, 1)
        steps = self.step_scheduler
        self.telemetry.log_validation(
            MetricsSample(
                step=steps.step,
                epoch=steps.epoch,
                loss=val_loss,
                lr=self.optimizer.param_groups[0]["lr"],
                num_label_tokens=total_tokens,
            )
        )
        return val_loss

    def save(self) -> Path:
        """Checkpoint the run: HF model directory, optimizer, training state and resolved config."""
        steps = self.step_scheduler
        return self.checkpointer.save(
            steps.epoch,
            steps.step,
            model=self.unwrapped,
            write_extras=self.write_hf_extras,
            **self.training_state(),
        )


def check(cfg: ConfigNode) -> None:
    """Pre-flight checks that need no model: batch arithmetic, LoRA settings, optional extras."""
    distributed, dp_size = read_distributed(cfg)
    check_pipeline(cfg, distributed)
    check_fused_loss(cfg, build.build_loss(cfg), distributed)
    build.build_step_scheduler(cfg, dp_size)
    build_lora_config(cfg)
    read_moe(cfg, distributed.ep_size)
    check_metric_loggers(cfg)


def run(cfg: ConfigNode) -> None:
    """Set up the recipe and train."""
    recipe = FinetuneRecipeForCausalLM(cfg)
    finished = False
    try:
        recipe.setup()
        recipe.run_train_validation_loop()
        finished = True
    finally:
        shutdown(recipe, barrier=finished)  # free sharded modules, then end the process group


def main(argv: list[str] | None = None) -> int:
    """Fine-tune a Hugging Face causal LM (SFT on QA, chat or instruction data)."""
    return recipe_main(argv, sections=SECTIONS, run=run, check=check)


def pretrain_main(argv: list[str] | None = None) -> int:
    """Pre-train a causal LM from random initialisation on plain text."""
    return recipe_main(argv, sections=SECTIONS, run=run, check=check)
