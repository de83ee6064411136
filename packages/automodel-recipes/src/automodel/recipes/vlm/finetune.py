"""Fine-tune any Hugging Face vision-language model (image-text-to-text) from one YAML file.

automodel finetune vlm -c examples/vlm_finetune/tiny_vlm.yaml

The model comes from `transformers.AutoModelForImageTextToText` (through
`automodel.core.models.AutoModelForImageTextToText`), its processor from `AutoProcessor`; the
data are image-text conversations whose loss is on the assistant's answers. What is the same as
fine-tuning an LLM is finetune.llm's, by name below: next-token labels, the loop with gradient
accumulation normalised by label tokens, checkpoints (HF folder with the processor, or a PEFT
adapter), exact resume and preemption, and MoE blocks in the language model (`moe:`, with
expert parallelism over the data-parallel ranks). Validation adds the answer accuracy of greedy
decoding.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from automodel.checkpoint import HF_WEIGHTS, PEFT_ADAPTER
from automodel.core.config import ConfigNode, recipe_main
from automodel.core.losses import MaskedCrossEntropy, count_label_tokens
from automodel.core.training import exact_match_counts

from .. import (
    CHECKPOINT_SECTIONS,
    LOADER_SECTIONS,
    MODEL_SECTIONS,
    OPTIMIZER_SECTIONS,
    RUN_SECTIONS,
    MoeStep,
    RunViews,
    adapter_extras_writer,
    build_lora_config,
    build_model,
    build_training,
    hf_extras_writer,
    preflight,
    prepare_model,
    read_moe,
    restore_training_state,
    run_then_shutdown,
    shard_model,
    start_run,
)
from .._freeze import vlm_parts
from ..llm._data import build_loss
from ..llm._fused_loss import is_fused, with_fused_loss
from ..llm.finetune import FinetuneRecipeForCausalLM as Finetune
from ._data import VLM_SECTIONS, build_processor, build_vlm_loaders

log = logging.getLogger("automodel.recipes.vlm")
# validation's loss from the logits the answer accuracy needs (the fused loss's own value)
_CROSS_ENTROPY = MaskedCrossEntropy()

SECTIONS = {
    **RUN_SECTIONS,
    **MODEL_SECTIONS,
    **VLM_SECTIONS,
    **LOADER_SECTIONS,
    **OPTIMIZER_SECTIONS,
    **CHECKPOINT_SECTIONS,
}


class FinetuneRecipeForVLM(RunViews):
    """Supervised fine-tuning of a HF image-text-to-text model: `setup()`, then the loop."""

    prepare = Finetune.prepare
    forward_loss = Finetune.forward_loss
    forward_backward = Finetune.forward_backward
    training_state = Finetune.training_state
    run_train_validation_loop = Finetune.run_train_validation_loop
    train_steps = Finetune.train_steps
    count_targets = Finetune.count_targets  # label tokens
    real_tokens = Finetune.real_tokens
    validate = Finetune.validate  # calls self.validation_totals below
    save = Finetune.save

    def __init__(self, cfg: ConfigNode):
        self.cfg = cfg
        self.pipeline = None  # check() refuses pp_size > 1

    def setup(self) -> None:
        """Build every piece from the config, in the order infrastructure must be applied."""
        cfg = self.cfg
        check(cfg)
        self.lora = build_lora_config(cfg)
        weights = PEFT_ADAPTER if self.lora is not None else HF_WEIGHTS
        self.run = ctx = start_run(
            cfg, default_run_dir="runs/vlm", weights_format=weights, unused_parameters=True
        )  # an image tower's unused norm, text-only rows: DDP lets such parameters be
        self.preprocessor = processor = build_processor(cfg)  # saved beside the model
        self.tokenizer = processor.tokenizer
        self.loss_fn = build_loss(cfg)
        moe = read_moe(cfg, ctx.distributed.ep_size)
        model = build_model(cfg)
        self.flops_per_token = None  # no FLOPs count for image towers yet: no MFU
        if self.lora is not None:
            self.lora = language_model_only(self.lora, model)
        model = prepare_model(model, ctx, moe=moe, lora=self.lora, loss_fn=self.loss_fn)
        self.unwrapped = model
        write_extras = adapter_extras_writer if self.lora is not None else hf_extras_writer
        self.write_hf_extras = write_extras(model, cfg, processor)  # while it is whole
        self.moe = MoeStep(model, moe, self.parallel)  # the language model's MoE blocks
        experts = self.moe.shard_experts(cfg)  # distributed.ep_size > 1: this rank's experts
        # a fused loss runs inside the forward the strategy wraps (it reads the LM head)
        self.model = shard_model(with_fused_loss(model, self.loss_fn), ctx, experts)

        local = self.step_scheduler.local_batch_size
        shard = (self.parallel.dp_rank, self.parallel.dp_size)  # each dp rank reads its shard
        self.train_set, self.train_loader, self.val_loader = build_vlm_loaders(
            cfg, processor, local, ctx.seed, *shard
        )
        self.optimizer, self.lr_scheduler, self.telemetry, self.optimizer_step, total = (
            build_training(ctx, self.unwrapped, self.train_loader, self.moe)
        )
        restore_training_state(ctx, self.unwrapped, self.telemetry, **self.training_state())
        trainable = sum(p.numel() for p in self.unwrapped.parameters() if p.requires_grad)
        params = sum(p.numel() for p in self.unwrapped.parameters())
        log.info(
            "model: %s, %.2fM parameters (%.2fM trained) on %s; %d training steps",
            type(self.unwrapped).__name__, params / 1e6, trainable / 1e6, self.device, total,
        )  # fmt: skip

    def validation_totals(self, batches: Any) -> tuple[float, int, dict[str, tuple[int, int]]]:
        """(summed per-token loss, label tokens, {"answer/accuracy": (exact answers, answers)})
        over this rank's validation batches."""
        total_loss, total_tokens, hits, answers = 0.0, 0, 0, 0
        for batch in batches:
            batch = {k: v.to(self.device) for k, v in self.prepare(batch).items()}
            labels = batch.pop("labels")
            tokens = int(count_label_tokens(labels))
            # every rank: FSDP2 gathers; the fused loss's model gives logits without labels
            fused = is_fused(self.loss_fn)
            logits = self.model(batch) if fused else self.model(**batch, use_cache=False).logits
            loss = (_CROSS_ENTROPY if fused else self.loss_fn)(logits, labels, tokens)
            right, counted = exact_match_counts(logits, labels)
            hits, answers = hits + right, answers + counted
            if tokens:
                total_loss += loss.item() * tokens
                total_tokens += tokens
        return total_loss, total_tokens, {"answer/accuracy": (hits, answers)}


def language_model_only(lora: Any, model: torch.nn.Module) -> Any:
    """LoRA leaves the vision tower and the projector alone unless `target_modules` names a
    path inside them: their modules are added to `exclude_modules`."""
    paths = {id(module): name for name, module in model.named_modules()}
    towers = [
        paths[id(part)]
        for key, part in vlm_parts(model).items()
        if part is not None and key != "language_model"
    ]
    asked = [t for t in towers for p in lora.target_modules if p.startswith(t)]
    for tower in towers:
        if tower not in asked:
            lora.exclude_modules = [*lora.exclude_modules, f"{tower}.*"]
    return lora


def run(cfg: ConfigNode) -> None:
    """Set up the recipe and train; then free sharded modules and end the process group."""
    recipe = FinetuneRecipeForVLM(cfg)
    run_then_shutdown(recipe, recipe.setup, recipe.run_train_validation_loop)


def check(cfg: ConfigNode) -> None:
    """Pre-flight checks that need no model: the shared ones and the layouts VLMs lack yet."""
    # sequences (image tokens) and stages are not split yet; the language model's layers over
    # tp ranks (its tensor-parallel plan), its experts over dp ranks
    preflight(cfg, data_parallel_only="VLMs", also=("tp_size", "ep_size"))


def main(argv: list[str] | None = None) -> int:
    """Fine-tune a Hugging Face vision-language model on image-text conversations."""
    return recipe_main(argv, sections=SECTIONS, run=run, check=check)
