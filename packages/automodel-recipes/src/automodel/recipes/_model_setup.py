"""Model infrastructure in its fixed order: repaired embedding rows, context parallel attention,
MoE blocks, LoRA, (FP8/QAT), freezing and the restored weights on the whole model; then sharding
and torch.compile."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from automodel.peft import LoraConfig

from ._context_parallel import attend_across_ranks
from ._embedding_repair import apply_embedding_repair
from ._fp8 import apply_fp8, read_fp8
from ._freeze import apply_freeze
from ._moe import apply_moe
from ._neftune import apply_neftune
from ._peft import apply_peft
from ._qat import apply_qat, read_qat
from ._run import RunContext, restore_weights
from ._sections import Compile, Freeze, Moe, read_section


def prepare_model(
    model: nn.Module,
    run: RunContext,
    *,
    moe: Moe | None = None,
    lora: LoraConfig | None = None,
    loss_fn: Any = None,
) -> nn.Module:
    """Apply the model infrastructure the config asks for to the whole, unplaced model, in place.

    The order matters: MoE blocks first (LoRA, the restore and sharding see the new blocks),
    LoRA before the restore (a PEFT checkpoint holds the adapter only), freezing before the
    restore (an adapter checkpoint holds exactly the parameters left trainable).
    With `qat:` the fake quantization starts switched off: the training loop calls
    `run.fake_quant.at_step(step)` before each step (as finetune.llm's `train_steps` does).
    """
    cfg = run.cfg
    apply_embedding_repair(model, cfg)  # the checkpoint's weights, before anything wraps them
    attend_across_ranks(model, run.parallel.cp, cfg)  # cp_size > 1: the split sequence
    if moe is not None:
        apply_moe(model, moe, cfg)
    if lora is not None:
        apply_peft(model, lora, cfg, loss_fn, run.device)
    fp8 = read_fp8(cfg)
    if fp8 is not None:  # float8 linear layers (the weights keep their names)
        apply_fp8(model, fp8, cfg)
    qat = read_qat(cfg)
    if qat is not None:  # fake-quantized linear layers (the weights keep their names)
        run.fake_quant = apply_qat(model, qat, cfg, loss_fn)
    apply_freeze(model, read_section(cfg, "freeze", Freeze), cfg)
    apply_neftune(model, cfg, run.distributed.cp_size)
    restore_weights(run, model)
    return model


def shard_model(
    model: nn.Module, run: RunContext, ignored_params: set[nn.Parameter] | None = None
) -> nn.Module:
    """The model spread over the mesh by the run's strategy, then compiled if `compile:` asks.

    `ignored_params` (expert-parallel weights) are left out of FSDP2/DDP.
    """
    model = run.parallel.shard(model, ignored_params)
    options = read_section(run.cfg, "compile", Compile)
    if options.enabled:
        model = torch.compile(
            model, mode=options.mode, fullgraph=options.fullgraph, dynamic=options.dynamic
        )
    return model
