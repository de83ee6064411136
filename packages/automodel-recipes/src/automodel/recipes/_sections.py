"""The standard config sections recipes share: plain sections with their defaults, and tables.

A recipe's `SECTIONS` is the union of the tables it reads plus its own sections, e.g.
`{**RUN_SECTIONS, **MODEL_SECTIONS, **OPTIMIZER_SECTIONS, "kd": Section(keys_of=Kd)}`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, fields
from typing import Any

from automodel.core.config import ConfigNode, Section
from automodel.core.data import build_dataloader
from automodel.core.logging import MlflowLogger, WandbLogger
from automodel.core.optim import build_lr_scheduler
from automodel.core.training import StepScheduler

from ._errors import config_problem


@dataclass(frozen=True)
class PackedSequence:
    """`packed_sequence:` pack documents into rows of this many tokens (0 or absent: no packing);
    `max_packs`: at most that many rows, of the first documents in dataset order."""

    packed_sequence_size: int = 0
    max_packs: int | None = None


@dataclass(frozen=True)
class ClipGradNorm:
    """`clip_grad_norm:` the max total gradient norm; `max_norm: null` measures without clipping."""

    max_norm: float | None = 1.0


@dataclass(frozen=True)
class Nonfinite:
    """`nonfinite:` a step whose loss or gradient norm is NaN or inf is skipped (the weights and
    optimizer state stay as they were); `patience` such steps in a row stop the run (null: never)."""

    patience: int | None = 10


@dataclass(frozen=True)
class Checkpoint:
    """`checkpoint:` where and how the training state is saved, and what to resume from."""

    checkpoint_dir: str | None = None  # default: <run_dir>/checkpoints
    max_shard_size: str = "5GB"
    save_final: bool = True
    restore_from: str | None = "latest"  # latest (or null): resume if any | fresh | a path
    keep_last_n: int | None = None  # null: keep every checkpoint
    save_merged_model: bool = False  # with `peft:`: also write <run_dir>/merged_model at the end
    async_save: bool = False
    preempt_signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")


@dataclass(frozen=True)
class Freeze:
    """`freeze:` parameters that are not trained (`requires_grad=False`, left out of the optimizer)."""

    patterns: tuple[str, ...] = ()  # fnmatch patterns over parameter names, e.g. "model.layers.0.*"
    embeddings: bool = False  # the input embeddings (and a tied LM head)
    vision_tower: bool = False  # a VLM's image encoder
    multimodal_projector: bool = False  # a VLM's projection of image features into the LM
    language_model: bool = False  # a VLM's language model (its decoder layers and norms)


@dataclass(frozen=True)
class Rng:
    """`rng:` the seed of python, numpy and torch (model init, dropout, shuffling)."""

    seed: int = 1234


@dataclass(frozen=True)
class Compile:
    """`compile:` wrap the model in torch.compile."""

    enabled: bool = False
    mode: str | None = None
    fullgraph: bool = False
    dynamic: bool | None = None


@dataclass(frozen=True)
class Fp8:
    """`fp8:` train the linear layers in float8 (torchao's Float8Linear: float8 matmuls with
    dynamic scales, float32/bfloat16 weights and optimizer); CUDA SM 8.9+ unless `emulate`."""

    recipe: str = "tensorwise"  # tensorwise | rowwise | rowwise_with_gw_hp (torchao's recipes)
    skip_modules: tuple[str, ...] = ()  # a linear layer whose path contains one stays as it is
    fsdp_float8_all_gather: bool = False  # tensorwise + fsdp2: gather the weights in float8
    emulate: bool = False  # float8 matmuls emulated (any device; for tests)


@dataclass(frozen=True)
class Qat:
    """`qat:` quantization-aware training: from optimizer step `start_step` on, the linear layers
    compute with weights (and activations) rounded to the integer grid of `scheme` and back
    (torchao's fake quantization); the weights stay as they are, under their names."""

    scheme: str = "int8_dynact_int4weight"  # | int4_weight_only
    group_size: int = 256  # weights are quantized in groups of this many input features
    start_step: int = 1  # the first optimizer step (counting from 1) with fake quantization
    skip_modules: tuple[str, ...] = ()  # a linear layer whose path contains one stays as it is


@dataclass(frozen=True)
class EmbeddingRowRepair:
    """`embedding_row_repair:` before training, input-embedding rows of norm <= `min_norm` (or
    not finite) take their token's LM-head direction at the healthy rows' RMS norm
    (`automodel.core.models.repair_embedding_rows`); more than `max_rows` of them is an error."""

    enabled: bool = True
    min_norm: float = 1e-6
    max_rows: int = 256


@dataclass(frozen=True)
class Neftune:
    """`neftune:` uniform noise on the input embeddings while training (NEFTune, arXiv
    2310.05914), of magnitude `noise_alpha / sqrt(sequence length × hidden size)`."""

    noise_alpha: float = 5.0


@dataclass(frozen=True)
class Distributed:
    """`distributed:` data parallelism over the processes torchrun launched (`--nproc-per-node`).

    Strategy options left null take the strategy's own default.
    """

    strategy: str | None = "auto"  # fsdp2 | ddp | none (or null); auto: fsdp2 if > 1 process
    dp_size: int | str = "auto"  # auto: every process is data parallel
    dp_replicate_size: int = 1  # > 1 with fsdp2: HSDP (replicate across, shard within)
    tp_size: int = 1  # tensor parallel (with fsdp2 over the dp dims): the model's HF tp_plan
    sequence_parallel: bool = False  # with tp_size > 1: norms and residuals sharded on sequence
    cp_size: int = 1
    pp_size: int = 1  # pipeline stages (with fsdp2 over the dp ranks of each stage)
    pp_schedule: str = "1f1b"  # 1f1b | gpipe (one stage per rank) | interleaved_1f1b | looped_bfs
    pp_layers_per_stage: int | None = None  # null: one stage per rank (two when interleaved)
    pp_stage_rounding: str | None = None  # up | down: round the stage count to a pp_size multiple
    ep_size: int = 1  # with a moe: section, experts shared out over this many dp × cp ranks
    mp_param_dtype: str | None = None  # fsdp2: dtype parameters are gathered and computed in
    mp_reduce_dtype: str | None = None  # fsdp2: dtype gradients are reduced in (default float32)
    reshard_after_forward: bool | None = None  # fsdp2
    cpu_offload: bool | None = None  # fsdp2
    activation_checkpointing: bool | None = None  # fsdp2, ddp, none
    defer_grad_sync: bool | None = None  # reduce once per step, not per micro-batch; null: ddp
    # ddp: let parameters a batch leaves without a gradient be (a VLM's unused vision norm,
    # text-only rows); null: the recipe's default (true for finetune.vlm, else false)
    find_unused_parameters: bool | None = None
    timeout_minutes: float = 30
    device: str = "auto"  # auto | cpu | cuda


@dataclass(frozen=True)
class Moe:
    """`moe:` swap the model's Hugging Face MoE blocks for automodel.moe's (same weight names)."""

    # aux_loss | bias (auxiliary-loss-free) | none | nemo_automodel (NeMo AutoModel's for the
    # model's family: see _moe_nemo)
    balancing: str = "aux_loss"
    aux_loss_coeff: float = 1e-3  # with aux_loss: weight of the load-balancing loss
    bias_update_rate: float = 1e-3  # with bias: step of the per-expert bias after each update
    backend: str = "auto"  # auto | grouped_mm | loop
    dispatcher: str = "all_to_all"  # with ep_size > 1: all_to_all | deepep (CUDA, the extra)
    routing: str = "learned"  # learned | balanced (benchmarks: equal load per expert, no gate)
    # LoRA on the experts' stacked weights (peft.target_parameters) at rank peft.dim // top-k,
    # alpha unchanged: NeMo AutoModel's moe_rank_scaling (see _moe_nemo)
    lora_rank_scaling: bool = False


@dataclass(frozen=True)
class Logging:
    """`logging:` run directory, log level, progress bars, a plot at the end."""

    run_dir: str | None = None  # default: the recipe's own (e.g. runs/llm)
    level: str = "INFO"
    progress: bool = True
    plot: bool = False  # draw <run_dir>/metrics.png and .svg at the end (the [plot] extra)


def check_plot(cfg: ConfigNode) -> None:
    """`logging.plot: true` needs matplotlib: a config problem before the run, not after it."""
    if (
        read_section(cfg, "logging", Logging).plot
        and importlib.util.find_spec("matplotlib") is None
    ):
        message = (
            "plotting at the end of the run needs matplotlib, which is not installed; install "
            "it with `pip install 'automodel-recipes[plot]'`, or draw the plot later with "
            "`automodel plot <run_dir>` where it is installed"
        )
        raise config_problem(cfg, "logging.plot", message)


def document_rows(cfg: ConfigNode) -> str | None:
    """The key that puts several documents in one row (`position_ids` restarting at 0 for each,
    no attention mask): `packed_sequence.packed_sequence_size`, or `padding_free` of a loader
    section; None where each row holds one sample."""
    if read_section(cfg, "packed_sequence", PackedSequence).packed_sequence_size:
        return "packed_sequence.packed_sequence_size"
    for name in ("dataloader", "validation_dataloader"):
        if cfg.get(f"{name}.padding_free"):
            return f"{name}.padding_free"
    return None


def read_section(cfg: ConfigNode, name: str, kind: type) -> Any:
    """The section `name` as an instance of its dataclass, defaults filled in."""
    node = cfg.get(name)
    values = node.to_dict() if isinstance(node, ConfigNode) else {}
    known = {f.name for f in fields(kind)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
    return kind(**values)


_LOADER_ARGS = ("dataset", "batch_size", "dp_rank", "dp_size")

# What every training run reads: batch arithmetic, seed, processes, logging and metric loggers.
RUN_SECTIONS = {
    "step_scheduler": Section(required=True, keys_of=StepScheduler, provided=("dp_size",)),
    "rng": Section(keys_of=Rng),
    "distributed": Section(keys_of=Distributed),
    "logging": Section(keys_of=Logging),
    "wandb": Section(keys_of=WandbLogger, provided=("config",)),
    "mlflow": Section(keys_of=MlflowLogger, provided=("config",)),
}
CHECKPOINT_SECTIONS = {"checkpoint": Section(keys_of=Checkpoint)}
# The trained model and the infrastructure applied to it (see prepare_model).
MODEL_SECTIONS = {
    "model": Section(required=True, needs_target=True),
    "peft": Section(needs_target=True),
    "moe": Section(keys_of=Moe),
    "freeze": Section(keys_of=Freeze),
    "compile": Section(keys_of=Compile),
    "fp8": Section(keys_of=Fp8),
    "qat": Section(keys_of=Qat),  # the training loop switches it on by step (FakeQuant.at_step)
    "neftune": Section(keys_of=Neftune),
    "embedding_row_repair": Section(keys_of=EmbeddingRowRepair),
}
OPTIMIZER_SECTIONS = {
    "optimizer": Section(required=True, needs_target=True, provided=("params",)),
    "lr_scheduler": Section(keys_of=build_lr_scheduler, provided=("optimizer", "total_steps")),
    "clip_grad_norm": Section(keys_of=ClipGradNorm),
    "nonfinite": Section(keys_of=Nonfinite),
}
# Loaders of the recipe's datasets (built by build_loader).
LOADER_SECTIONS = {
    "dataloader": Section(keys_of=build_dataloader, provided=_LOADER_ARGS),
    "validation_dataloader": Section(keys_of=build_dataloader, provided=_LOADER_ARGS),
}
