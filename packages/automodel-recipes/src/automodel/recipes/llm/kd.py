"""Distil a frozen Hugging Face causal LM (the teacher) into another (the student), from one YAML.

automodel kd llm -c examples/llm_kd/tiny_kd.yaml

loss = (1 - kd_ratio) * CE + kd_ratio * T^2 * KL(teacher || student), over the answer tokens
(labels != -100) and normalised by the step's label tokens like finetune.llm's loss. Both
models' LM heads are applied chunk by chunk (FusedLinearKDLoss): neither model's [tokens,
vocab] logits are built. The student is trained as finetune.llm trains its model (LoRA,
freeze, MoE, FSDP2/DDP) and is all a checkpoint holds; the teacher is read-only. It runs
beside the student, or with `teacher_distributed:` on processes of its own (_kd_teacher).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

from automodel.checkpoint import HF_WEIGHTS, PEFT_ADAPTER
from automodel.core.config import ConfigNode, Section, recipe_main
from automodel.core.losses import FusedLinearCrossEntropy, FusedLinearKDLoss, FusedLossModel

from .. import (
    Checkpoint,
    Distributed,
    MoeStep,
    Parallel,
    PendingStep,
    RunViews,
    adapter_extras_writer,
    build_lora_config,
    build_model,
    build_training,
    hf_extras_writer,
    preflight,
    prepare_model,
    read_moe,
    read_section,
    restore_training_state,
    run_then_shutdown,
    shard_model,
    start_run,
)
from .._builders import model_config
from .._context_parallel import attend_across_ranks
from .._errors import config_problem
from .._kd_teacher import (
    TEACHER_SECTION,
    RankSplit,
    RemoteTeacher,
    read_rank_split,
    serve_teacher,
    setup_processes,
    teacher_tp_plan,
)
from ._data import build_loaders, build_tokenizer, check_documents, check_rows, real_tokens
from .finetune import SECTIONS as FINETUNE_SECTIONS
from .finetune import FinetuneRecipeForCausalLM as Finetune

log = logging.getLogger("automodel.recipes.llm")


@dataclass(frozen=True)
class Kd:
    """`kd:` the share of the loss that is distillation, its temperature, where the teacher lives."""

    kd_ratio: float = 0.5  # 0: cross-entropy alone (the teacher is still run, its KL logged)
    temperature: float = 1.0  # T > 1 softens both distributions; the KL term is scaled by T^2
    offload_teacher: bool = False  # keep the teacher on the CPU, on the device for its forwards


# finetune.llm's sections (the student is `model:`), the fused KD loss instead of `loss_fn:`
SECTIONS = {
    **{name: section for name, section in FINETUNE_SECTIONS.items() if name != "loss_fn"},
    "teacher_model": Section(required=True, needs_target=True),
    "kd": Section(keys_of=Kd),
    TEACHER_SECTION: Section(keys_of=Distributed),  # the teacher on processes of its own
}


class TeacherOutputs(FusedLossModel):
    """The frozen teacher's forward: final hidden states and a float32 copy of its LM head.

    The copy is taken inside the forward that FSDP2 gathers the head for (a shard is all the
    module holds outside it); the KD loss would make this float32 copy anyway.
    """

    def __init__(self, teacher: nn.Module):
        super().__init__(teacher.requires_grad_(False), loss_fn=None)
        self.eval()

    @torch.no_grad()
    def forward(self, batch: dict[str, torch.Tensor], with_head: bool = True) -> tuple[Any, ...]:
        hidden = self.causal_lm.get_decoder()(**batch, use_cache=False).last_hidden_state
        if not with_head:
            return hidden, None, None
        head = self.causal_lm.get_output_embeddings()
        bias = None if head.bias is None else head.bias.to(torch.float32, copy=True)
        return hidden, head.weight.to(torch.float32, copy=True), bias


class StudentWithKDLoss(FusedLossModel):
    """The student whose forward returns (loss, CE, KL) of a micro-batch against the teacher's
    outputs; without them, its cross-entropy (validation). FSDP2/DDP wrap this forward."""

    def __init__(self, student: nn.Module, kd_loss: FusedLinearKDLoss, ce_loss: Any):
        super().__init__(student, ce_loss)
        self.kd_loss = kd_loss

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        labels: torch.Tensor,
        num_label_tokens: int | None = None,
        teacher: tuple[Any, ...] | None = None,
    ) -> Any:
        if teacher is None:
            return super().forward(batch, labels, num_label_tokens)
        hidden = self.causal_lm.get_decoder()(**batch, use_cache=False).last_hidden_state
        head = self.causal_lm.get_output_embeddings()
        teacher_hidden, teacher_weight, teacher_bias = teacher
        return self.kd_loss(
            hidden, head.weight, teacher_hidden, teacher_weight, labels, num_label_tokens,
            head.bias, teacher_bias, return_parts=True,
        )  # fmt: skip


class KDRecipeForCausalLM(RunViews):
    """Distillation of a frozen teacher into a student causal LM: `setup()`, then the
    train/validation loop. What is the same as fine-tuning the student is finetune.llm's, by
    name below: next-token labels, the loop, validation (the student's CE, comparable with
    finetune.llm's validation loss) and the checkpoint (the student, HF weights or adapter)."""

    prepare = Finetune.prepare
    forward_loss = Finetune.forward_loss
    training_state = Finetune.training_state
    train_steps = Finetune.train_steps  # calls self.forward_backward and self.optimizer_step below
    count_targets = Finetune.count_targets  # label tokens
    real_tokens = Finetune.real_tokens
    validate = Finetune.validate
    validation_totals = Finetune.validation_totals
    save = Finetune.save

    def __init__(self, cfg: ConfigNode):
        self.cfg = cfg
        self.pipeline = None  # kd.llm has no pipeline parallelism (check refuses pp_size > 1)
        self.remote: RemoteTeacher | None = None  # the teacher on processes of its own
        self.serving: tuple[RankSplit, Parallel] | None = None  # this process serves the teacher

    def setup(self) -> None:
        """Build every piece from the config: the student exactly as finetune.llm builds its
        model, then the teacher placed beside it (or on processes of its own), data, optimizer
        (the student's) and restore."""
        cfg = self.cfg
        check(cfg)  # in-process too: the refused layouts, the vocabularies (before any weights)
        self.kd, kd_loss = read_kd(cfg)
        split, processes = read_rank_split(cfg), None  # None: the teacher beside the student
        if split is not None:  # both models' meshes, on every process; then this one's model
            processes, teacher_processes = setup_processes(cfg, split)
            if teacher_processes is not None:
                return self.setup_teacher(split, teacher_processes)
        self.lora = build_lora_config(cfg)
        adapter = self.lora is not None
        weights = PEFT_ADAPTER if adapter else HF_WEIGHTS  # the student's weights, or its adapter
        self.run = ctx = start_run(
            cfg, default_run_dir="runs/kd", weights_format=weights, parallel=processes
        )
        self.tokenizer = self.preprocessor = build_tokenizer(cfg)  # saved beside the student
        self.loss_fn = FusedLinearCrossEntropy()  # the student's CE (validation); no LoRA head
        moe = read_moe(cfg, ctx.distributed.ep_size)
        student = build_model(cfg)
        cp_size = ctx.distributed.cp_size  # both models: this rank's part of each sequence
        check_documents(cfg, student, self.step_scheduler.local_batch_size, cp_size)
        self.unwrapped = prepare_model(student, ctx, moe=moe, lora=self.lora, loss_fn=self.loss_fn)
        self.write_hf_extras = (adapter_extras_writer if adapter else hf_extras_writer)(
            student, cfg, self.tokenizer
        )  # the student's files, written while it is whole
        self.moe = MoeStep(student, moe, self.parallel)
        wrapped = StudentWithKDLoss(student, kd_loss, self.loss_fn)
        self.model = shard_model(wrapped, ctx, self.moe.shard_experts(cfg))
        if split is None:
            teacher = build_teacher(cfg)
            check_documents(cfg, teacher, self.step_scheduler.local_batch_size, cp_size)
            attend_across_ranks(teacher, self.parallel.cp, cfg)  # as the student's (prepare_model)
            self.teacher = self.place_teacher(teacher, self.parallel)
        else:
            self.teacher, self.remote = None, RemoteTeacher(split, self.device)

        batch_size, shard = self.step_scheduler.local_batch_size, self.parallel.dp_rank
        self.train_set, self.train_loader, self.val_loader = build_loaders(
            cfg, self.tokenizer, batch_size, ctx.seed, shard, self.parallel.dp_size
        )
        self.optimizer, self.lr_scheduler, self.telemetry, self.apply_step, steps = build_training(
            ctx, student, self.train_loader, self.moe
        )  # never the teacher's
        restore_training_state(ctx, student, self.telemetry, **self.training_state())
        where = "offloaded" if self.kd.offload_teacher else self.parallel.strategy.name
        where = f"on processes {split.teacher.start}-{split.teacher.stop - 1}" if split else where
        log.info(
            "student %.2fM parameters on %s, teacher %s; %d training steps",
            sum(p.numel() for p in student.parameters()) / 1e6, self.device, where, steps,
        )  # fmt: skip

    def setup_teacher(self, split: RankSplit, processes: Parallel) -> None:
        """On the teacher's processes (`teacher_distributed:`): the teacher on its mesh, to
        serve the student's processes (run_train_validation_loop)."""
        teacher = build_teacher(self.cfg)
        local_batch_size = self.cfg.get("step_scheduler.local_batch_size")
        cp_size = processes.cp.size if processes.cp is not None else 1
        check_documents(self.cfg, teacher, local_batch_size, cp_size)
        attend_across_ranks(teacher, processes.cp, self.cfg)  # its parts of each row
        self.teacher = self.place_teacher(teacher, processes)
        self.serving = split, processes

    def place_teacher(self, teacher: nn.Module, processes: Parallel) -> TeacherOutputs:
        """FSDP2-sharded (and TP) over `processes` under fsdp2, else whole on every rank; on
        the CPU between its forwards with kd.offload_teacher."""
        teacher = TeacherOutputs(teacher)
        if self.kd.offload_teacher:
            return teacher
        if processes.mesh is not None and processes.strategy.name == "fsdp2":
            plan = teacher_tp_plan(teacher, processes)
            return processes.shard(teacher, tp_plan=plan)  # frozen: gathered per forward
        return teacher.to(processes.device)  # ddp, none: DDP has nothing of a teacher's to reduce

    def teacher_outputs(
        self, batch: dict[str, torch.Tensor], with_head: bool = True
    ) -> tuple[Any, ...]:
        """The teacher's hidden states and head for `batch`; then its weights are back on the
        CPU (offloaded) or sharded (the FSDP2 root keeps them gathered for a backward)."""
        offload = self.kd.offload_teacher
        if offload:
            self.teacher.to(self.device)
        outputs = self.teacher(batch, with_head=with_head)
        if offload:
            self.teacher.to("cpu")
        elif isinstance(self.teacher, FSDPModule):
            self.teacher.reshard()
        return outputs

    def forward_backward(
        self, micro_batches: list[dict[str, torch.Tensor]], num_label_tokens: int
    ) -> tuple[torch.Tensor, int]:
        """Teacher forward, student forward and backward of each micro-batch of a step:
        (loss sum, real tokens); the CE and KL parts add up in `self.parts`."""
        loss_sum, tokens = torch.zeros((), device=self.device), 0
        self.parts = torch.zeros(2, device=self.device)
        if self.remote is not None:  # the teacher's processes start on every micro-batch now
            self.remote.request(micro_batches)
        for i, micro_batch in enumerate(micro_batches):
            batch = {k: v.to(self.device) for k, v in micro_batch.items()}
            labels = batch.pop("labels")
            teacher = self.remote.receive() if self.remote else self.teacher_outputs(batch)
            sync = self.parallel.micro_batch(self.model, last=i == len(micro_batches) - 1)
            with sync, self.moe.real_tokens_only(batch):
                loss, ce, kl = self.model(batch, labels, num_label_tokens, teacher)
                aux = self.moe.aux_loss(len(micro_batches))  # MoE load balancing, if any
                ((loss if aux is None else loss + aux) * self.parallel.averaged_over).backward()
            del teacher
            loss_sum += loss.detach()
            self.parts += torch.stack([ce, kl])
            tokens += real_tokens(batch, self.tokenizer.pad_token_id)
        return loss_sum, tokens

    def run_train_validation_loop(self) -> None:
        """Train the student, validating and checkpointing on schedule (finetune.llm's loop);
        on the teacher's processes, serve its forwards until the student's processes stop."""
        if self.serving is not None:
            signals = read_section(self.cfg, "checkpoint", Checkpoint).preempt_signals
            return serve_teacher(self.teacher_outputs, *self.serving, signals)
        Finetune.run_train_validation_loop(self)
        if self.remote is not None:
            self.remote.stop()

    def optimizer_step(self, *step: Any) -> PendingStep:
        """The shared optimizer step; its metrics add the step's CE and KL (over every rank)."""
        return self.apply_step(*step, sums={"ce_loss": self.parts[0], "kl_loss": self.parts[1]})


def build_teacher(cfg: ConfigNode) -> nn.Module:
    """The `teacher_model:` model, built without drawing from the global RNG (the student's run
    draws the same numbers with or without a teacher)."""
    with torch.random.fork_rng(devices=[]):
        return build_model(cfg, "teacher_model")


def read_kd(cfg: ConfigNode) -> tuple[Kd, FusedLinearKDLoss]:
    """The `kd:` section and its loss, which checks kd_ratio in [0, 1] and temperature > 0."""
    kd = read_section(cfg, "kd", Kd)
    try:
        return kd, FusedLinearKDLoss(kd.kd_ratio, kd.temperature)
    except (TypeError, ValueError) as e:
        raise config_problem(cfg, "kd", str(e)) from e


def check_teacher(cfg: ConfigNode) -> None:
    """The teacher must share the student's vocabulary (and pad id, where both set one)."""
    student, teacher = model_config(cfg, "model"), model_config(cfg, "teacher_model")
    for key in ("vocab_size", "pad_token_id") if student and teacher else ():
        ours, theirs = getattr(student, key, None), getattr(teacher, key, None)
        if ours != theirs and None not in (ours, theirs):
            message = (
                f"the teacher's {key} {theirs} differs from the student's (model:) {ours}: "
                "distillation compares next-token distributions, so both need one tokenizer"
            )
            raise config_problem(cfg, "teacher_model", message)


def run(cfg: ConfigNode) -> None:
    """Set up the recipe and train; then free student and teacher and end the process group."""
    recipe = KDRecipeForCausalLM(cfg)
    run_then_shutdown(recipe, recipe.setup, recipe.run_train_validation_loop)


def check(cfg: ConfigNode) -> None:
    """Pre-flight checks that load no weights: the shared ones, layouts, kd:, the teacher."""
    split = read_rank_split(cfg)  # teacher_distributed: the processes left to the student
    distributed = preflight(cfg, world_size=len(split.student) if split else None)
    for key in ("pp_size", "tp_size"):
        if getattr(distributed, key) > 1:
            message = f"{key} > 1 is not supported yet for kd.llm: use data or context parallelism"
            raise config_problem(cfg, f"distributed.{key}", message)
    if distributed.cp_size > 1 and split is not None:
        message = (
            "a student with cp_size > 1 and a teacher on processes of its own "
            "(teacher_distributed:) is not supported yet: keep the teacher beside the student"
        )
        raise config_problem(cfg, "distributed.cp_size", message)
    check_rows(cfg)
    kd, _ = read_kd(cfg)
    if split is not None and kd.offload_teacher:
        message = "a teacher on processes of its own (teacher_distributed:) is not offloaded"
        raise config_problem(cfg, "kd.offload_teacher", message)
    check_teacher(cfg)


def main(argv: list[str] | None = None) -> int:
    """Distil a frozen teacher causal LM into a student (same tokenizer) on SFT data."""
    return recipe_main(argv, sections=SECTIONS, run=run, check=check)
