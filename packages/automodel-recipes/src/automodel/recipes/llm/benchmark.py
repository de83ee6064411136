"""Throughput and efficiency of an LLM training configuration, on synthetic tokens (no dataset).

automodel benchmark llm -c examples/llm_benchmark/tiny_cpu.yaml

Every step trains on `step_scheduler.global_batch_size` rows of `benchmark.seq_length` random
token ids (labels = the ids: every token is real) with the config's model, parallel layout and
optimizer, built by the same shared parts as finetune.llm. The steps after the warm-up are
summarised in `<run_dir>/benchmark.json`; nothing is validated or checkpointed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from automodel.core.config import ConfigNode, Section, recipe_main
from automodel.core.losses import shift_labels
from automodel.core.optim import build_optimizer
from automodel.core.training import MetricsSample, peak_flops_for_device, peak_memory_gib
from automodel.distributed import is_main_process

from .. import (
    MODEL_SECTIONS,
    OPTIMIZER_SECTIONS,
    RUN_SECTIONS,
    ClipGradNorm,
    Compile,
    MoeStep,
    OptimizerStep,
    Telemetry,
    build_lora_config,
    build_model,
    build_scheduler,
    model_flops_per_token,
    preflight,
    prepare_model,
    read_back,
    read_moe,
    read_section,
    run_then_shutdown,
    set_aside_outputs,
    shard_model,
    start_run,
    training_session,
)
from .._errors import config_problem
from ._benchmark import (
    Benchmark,
    ProfileWindow,
    read_benchmark,
    stats,
    synthetic_batches,
)
from ._data import LM_SECTIONS, build_loss
from ._fused_loss import is_fused, with_fused_loss
from ._pipeline import Pipeline, check_pipeline

log = logging.getLogger("automodel.recipes.llm")

SECTIONS = {
    **RUN_SECTIONS,
    **MODEL_SECTIONS,
    **OPTIMIZER_SECTIONS,
    "loss_fn": LM_SECTIONS["loss_fn"],
    "benchmark": Section(required=True, keys_of=Benchmark),
}


class BenchmarkRecipeForCausalLM:
    """Timed training steps of a HF causal LM on synthetic tokens: `setup()`, then `run_steps()`."""

    def __init__(self, cfg: ConfigNode):
        self.cfg = cfg

    def setup(self) -> None:
        """The run, the model in its layout and the optimizer, built as finetune.llm builds them."""
        cfg = self.cfg
        self.bench = bench = read_benchmark(cfg)
        self.run = ctx = start_run(cfg, default_run_dir="runs/benchmark", weights_format=None)
        self.steps, self.parallel, self.device = ctx.step_scheduler, ctx.parallel, ctx.device
        check_pipeline(cfg, ctx.distributed)
        self.loss_fn = build_loss(cfg)
        self.lora, moe = build_lora_config(cfg), read_moe(cfg, ctx.distributed.ep_size)
        model = build_model(cfg)
        self.flops = model_flops_per_token(model, bench.seq_length)  # whole, without adapters
        model = prepare_model(model, ctx, moe=moe, lora=self.lora, loss_fn=self.loss_fn)
        params = list(model.parameters())  # the whole model, before any sharding
        self.facts = {
            "class": type(model).__name__,
            "parameters": sum(p.numel() for p in params),
            "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
            "dtype": str(params[0].dtype),
        }
        self.vocab_size = model.config.get_text_config().vocab_size
        self.moe = MoeStep(model, moe, self.parallel)
        self.pipeline = None
        if ctx.distributed.pp_size == 1:  # a fused loss runs inside the forward the strategy wraps
            self.unwrapped, experts = model, self.moe.shard_experts(cfg)
            self.model = shard_model(with_fused_loss(model, self.loss_fn), ctx, experts)
        else:  # this rank's stage, FSDP2 over its dp ranks
            n_micro = self.steps.grad_acc_steps
            args = (self.parallel, self.loss_fn, n_micro, bench.seq_length, None, cfg, self.moe)
            self.pipeline = Pipeline(model, *args)
            self.model = self.unwrapped = self.pipeline.stage
        self.optimizer = build_optimizer(self.unwrapped, cfg.optimizer)
        self.lr_scheduler = build_scheduler(cfg, self.optimizer, self.steps.max_steps)
        # a rerun in the same run_dir measures afresh; the earlier results are kept aside
        set_aside_outputs(ctx.run_dir, ("training.jsonl", "benchmark.json", "profile"))
        self.telemetry = Telemetry(
            ctx.run_dir, ctx.logging, cfg, self.steps.max_steps, started=ctx.started
        )
        self.peak = bench.peak_tflops * 1e12 if bench.peak_tflops else None
        if self.peak is None and self.device.type == "cuda":
            self.peak = peak_flops_for_device(torch.cuda.get_device_name(self.device))
        self.optimizer_step = OptimizerStep(
            self.unwrapped, self.optimizer, self.lr_scheduler, self.parallel,
            read_section(cfg, "clip_grad_norm", ClipGradNorm).max_norm, self.moe, self.flops,
            self.peak, self.pipeline.tied_copies if self.pipeline is not None else [],
        )  # fmt: skip
        self.tokens_per_step = self.steps.global_batch_size * bench.seq_length
        self.profile = ProfileWindow(bench.profile, ctx.run_dir, self.device)
        log.info(
            "benchmark: %s, %.2fM parameters (%.2fM trainable) on %s; %d steps (%d warm-up) of "
            "%d rows x %d tokens", self.facts["class"], self.facts["parameters"] / 1e6,
            self.facts["trainable_parameters"] / 1e6, self.device, self.steps.max_steps,
            bench.warmup_steps, self.steps.global_batch_size, bench.seq_length,
        )  # fmt: skip

    def run_steps(self) -> dict[str, Any]:
        """Train `max_steps` timed steps, then write the summary (rank 0) and return it."""
        rows, seq_len = self.steps.local_batch_size, self.bench.seq_length
        seed = self.run.seed + self.parallel.dp_rank  # tp, cp and pp peers: the same rows
        batches = synthetic_batches(self.vocab_size, rows, seq_len, seed)
        label_tokens = self.steps.global_batch_size * (seq_len - 1)  # next-token labels
        seconds: dict[int, float] = {}
        with training_session(self.run, self.telemetry, summary=False):  # its own summary
            self.model.train()
            for micro_batches in self.steps.steps(batches):
                step, micro_batches = self.steps.step, [self.prepare(b) for b in micro_batches]
                if self.pipeline is not None:  # split along the sequence (cp) by the pipeline
                    micro_batches = self.pipeline.even_out(micro_batches)
                self.run.fake_quant.at_step(step)  # qat: on from its start_step
                self.profile.before(step)
                self.synchronize()
                started = time.perf_counter()
                if self.pipeline is not None:
                    loss, tokens = self.pipeline.train_step(micro_batches, label_tokens, rows)
                else:
                    loss, tokens = self.forward_backward(micro_batches, label_tokens)
                pending = self.optimizer_step(self.steps, loss, tokens, label_tokens, started)
                self.synchronize()
                seconds[step] = time.perf_counter() - started
                self.profile.after(step)
                sample = self.measured(read_back([pending])[0], seconds[step])  # after the timing
                self.telemetry.log_train(sample, show=self.steps.is_log_step)
        return self.write_summary(seconds)

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Next-token labels, this rank's part of the sequence (cp; with a pipeline, its
        `even_out` splits), on the device."""
        batch = {**batch, "labels": shift_labels(batch["labels"])}
        if self.pipeline is None:
            batch = self.parallel.split_sequence(batch)
        return {key: value.to(self.device) for key, value in batch.items()}

    def forward_backward(self, micro_batches: list[dict], label_tokens: int) -> tuple[Any, int]:
        """Forward and backward of the step's micro-batches: (summed loss, this rank's tokens)."""
        losses = []
        for i, batch in enumerate(micro_batches):
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            with self.parallel.micro_batch(self.model, last=i == len(micro_batches) - 1):
                if is_fused(self.loss_fn):  # the wrapped FusedLossModel returns the loss
                    loss = self.model(inputs, batch["labels"], label_tokens)
                else:
                    logits = self.model(**inputs, use_cache=False).logits
                    loss = self.loss_fn(logits, batch["labels"], label_tokens)
                aux = self.moe.aux_loss(len(micro_batches))  # MoE load balancing, if any
                ((loss if aux is None else loss + aux) * self.parallel.averaged_over).backward()
            losses.append(loss.detach())
        return torch.stack(losses).sum(), sum(b["input_ids"].numel() for b in micro_batches)

    def synchronize(self) -> None:
        """Wait for the device's queued work, so that a step's time is its own."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measured(self, sample: MetricsSample, seconds: float) -> MetricsSample:
        """The step's metrics over its synchronised time, with its TFLOP/s per device."""
        tps = self.tokens_per_step / seconds
        per_device = tps / self.parallel.world_size
        extra = {**sample.extra, "step_time": seconds}
        if self.flops is not None:
            extra["tflops_per_gpu"] = per_device * self.flops / 1e12
        mfu = per_device * self.flops / self.peak if self.flops and self.peak else None
        return replace(sample, tps=tps, tps_per_gpu=per_device, mfu=mfu, extra=extra)

    def write_summary(self, seconds: dict[int, float]) -> dict[str, Any]:
        """Median/mean/min/max over the measured steps, and the facts of the configuration."""
        bench, world = self.bench, self.parallel.world_size
        memory = torch.tensor([peak_memory_gib(self.device)], device=self.device)
        if torch.distributed.is_initialized():  # the largest of any rank
            torch.distributed.all_reduce(memory, op=torch.distributed.ReduceOp.MAX)
        measured = [
            s for step, s in seconds.items()
            if step > bench.warmup_steps and not self.profile.covers(step)
        ]  # fmt: skip
        tps = [self.tokens_per_step / s for s in measured]
        per_device = [t / world for t in tps]
        tflops = [t * self.flops / 1e12 for t in per_device] if self.flops else None
        cuda = self.device.type == "cuda"
        layout = {k: v for k, v in asdict(self.run.distributed).items() if k != "timeout_minutes"}
        layout.update(
            dp_size=self.parallel.dp_size, lora=self.lora is not None,
            moe=self.moe.section is not None, loss_fn=type(self.loss_fn).__name__,
            compile=read_section(self.cfg, "compile", Compile).enabled,
        )  # fmt: skip
        summary = {
            "world_size": world,
            "device": torch.cuda.get_device_name(self.device) if cuda else self.device.type,
            "torch_version": torch.__version__,
            "layout": layout,
            "model": self.facts,
            "seq_length": bench.seq_length,
            "global_batch_size": self.steps.global_batch_size,
            "local_batch_size": self.steps.local_batch_size,
            "grad_acc_steps": self.steps.grad_acc_steps,
            "tokens_per_step": self.tokens_per_step,
            "flops_per_token": self.flops,
            "peak_tflops_per_device": self.peak / 1e12 if self.peak else None,
            "steps": len(seconds),
            "warmup_steps": bench.warmup_steps,
            "profile": asdict(bench.profile) if bench.profile else None,
            "measured_steps": len(measured),
            "step_time_s": stats(measured),
            "tokens_per_s": stats(tps),
            "tokens_per_s_per_gpu": stats(per_device),
            "tflops_per_gpu": stats(tflops) if tflops else None,
            "mfu": stats([t * 1e12 / self.peak for t in tflops]) if tflops and self.peak else None,
            "peak_memory_gib": memory.item(),
            "step_times_s": list(seconds.values()),
        }
        path = Path(bench.summary_file or self.run.run_dir / "benchmark.json")
        if is_main_process():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=1) + "\n")
            tflops, mfu = summary["tflops_per_gpu"], summary["mfu"]
            log.info(
                "benchmark, median of %d steps: %.4f s/step | %s tokens/s | %s tokens/s per "
                "device | %s TFLOP/s per device | MFU %s | peak memory %.2f GiB -> %s",
                len(measured), summary["step_time_s"]["median"],
                f"{summary['tokens_per_s']['median']:,.0f}",
                f"{summary['tokens_per_s_per_gpu']['median']:,.0f}",
                f"{tflops['median']:.3g}" if tflops else "n/a",
                f"{100 * mfu['median']:.1f}%" if mfu else "n/a", summary["peak_memory_gib"], path,
            )  # fmt: skip
        return summary


def run(cfg: ConfigNode) -> None:
    """Set up and run the benchmark; free every model and the process group on the way out."""
    recipe = BenchmarkRecipeForCausalLM(cfg)
    run_then_shutdown(recipe, recipe.setup, recipe.run_steps)


def check(cfg: ConfigNode) -> None:
    """Pre-flight checks that need no model: the shared ones, the benchmark section, the layout."""
    bench = read_benchmark(cfg)
    distributed = preflight(cfg)
    chunks = 2 * distributed.cp_size
    if distributed.cp_size > 1 and bench.seq_length % chunks:
        message = (
            f"context parallelism cuts rows into 2 x cp_size = {chunks} chunks: use a multiple"
        )
        raise config_problem(cfg, "benchmark.seq_length", message)
    check_pipeline(cfg, distributed)


def main(argv: list[str] | None = None) -> int:
    """Measure tokens/s, TFLOP/s, MFU and peak memory of a training configuration."""
    return recipe_main(argv, sections=SECTIONS, run=run, check=check)
