"""Pipeline parallelism in the LLM recipes: this rank's stage and torch's schedule over it.

The step scheduler's micro-batches go to the schedule as they are (``arg_mbs``/``target_mbs``),
all of a step padded to one length: `dataset.seq_length` where it is set, else the step's
longest batch rounded up to `dataloader.pad_to_multiple_of`; the stages take the new shapes
when that length changes (`distributed.PipelineSeqLen`). Padding goes at the end of each row,
where no real token sees it, and carries no label, so the losses do not depend on the length.
With MoE blocks every stage also gets each micro-batch's real-token mask (``kwarg_mbs``), so
that padding counts toward no routing statistic, and carries its balancing loss into backward
(`MoeStep.pipeline_run`). Rows of several documents (packed rows, padding-free batches) send
their ``position_ids`` to every stage the same way; each stage keeps attention within a document.
With context parallelism the step's micro-batches are padded to their one length first (a
multiple of 2 × cp_size), then split along the sequence (`Parallel.split_sequence`): every
stage runs on this rank's part, with its positions, and the attention of every stage joins the
cp ranks' parts (`even_out`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from automodel import distributed  # its pipelining parts load on use (torch._dynamo: ~1 s)
from automodel.core.config import ConfigNode
from automodel.core.losses import IGNORE_INDEX, count_label_tokens, shift_labels

from .._errors import config_problem
from .._moe import MoeStep
from .._parallel import Parallel
from .._sections import Distributed, document_rows, read_section
from ._data import real_tokens
from ._fused_loss import is_fused

log = logging.getLogger("automodel.recipes.llm")

# (input ids, labels, real-token masks, positions or None) per micro-batch of a step
MicroBatches = tuple[
    list[tuple[torch.Tensor]], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None
]
SCHEDULES = ("1f1b", "gpipe", "interleaved_1f1b", "looped_bfs")  # the last two: several per rank


def check_pipeline(cfg: ConfigNode, section: Distributed) -> None:
    """With `pp_size` > 1: refuse what stages do not support yet, before anything is built."""
    if section.pp_size == 1:
        return
    if section.pp_schedule not in SCHEDULES:
        raise config_problem(
            cfg, "distributed.pp_schedule",
            f"expected one of {', '.join(SCHEDULES)}, got {section.pp_schedule!r}",
        )  # fmt: skip
    if section.pp_stage_rounding not in (None, "up", "down"):
        raise config_problem(
            cfg, "distributed.pp_stage_rounding",
            f"expected up, down or null, got {section.pp_stage_rounding!r}",
        )  # fmt: skip
    if "peft" in cfg and cfg.get("checkpoint.save_merged_model"):
        raise config_problem(
            cfg, "checkpoint.save_merged_model",
            "the merged model needs the whole model on one rank, and each pipeline rank holds "
            "one stage: set it false and merge the saved adapter afterwards (peft's "
            "merge_and_unload, or a one-process run restoring the checkpoint)",
        )  # fmt: skip
    if cfg.get("compile.enabled"):
        raise config_problem(
            cfg, "compile.enabled", "torch.compile with pp_size > 1 is not wired yet"
        )


def step_length(batches: list[dict[str, torch.Tensor]], multiple: int = 1) -> int:
    """The longest of a step's (or validation chunk's) batches, rounded up to `multiple`."""
    longest = max((batch["input_ids"].shape[1] for batch in batches), default=1)
    return -(-max(longest, 1) // multiple) * multiple


class Pipeline:
    """This rank's stage of the model (FSDP2 over its data-parallel ranks) and the schedule.

    `seq_len`: the length of every micro-batch (None: each step's own, see the module notes).
    """

    def __init__(
        self,
        model: nn.Module,
        parallel: Parallel,
        loss_fn: nn.Module,
        n_micro: int,
        seq_len: int | None,
        pad_token_id: int | None,
        cfg: ConfigNode,
        moe: MoeStep | None = None,
    ) -> None:
        section = read_section(cfg, "distributed", Distributed)
        rows = document_rows(cfg)
        attention = str(getattr(model.config, "_attn_implementation", None))
        if rows is not None and attention.startswith("flash"):
            message = (
                f"rows of several documents in pipeline stages need sdpa or eager attention "
                f"(each stage masks the documents apart), not {attention}"
            )
            raise config_problem(cfg, rows, message)
        try:
            num_stages = distributed.pipeline_stage_count(
                len(model.model.layers), section.pp_size, section.pp_schedule,
                section.pp_layers_per_stage, section.pp_stage_rounding,
            )  # fmt: skip
            stages = distributed.split_decoder_into_stages(
                model, distributed.submesh(parallel.mesh, "pp"), num_stages
            )
        except (NotImplementedError, ValueError, AttributeError) as e:
            raise config_problem(cfg, "distributed.pp_size", str(e)) from e
        self.moe = moe if moe is not None and moe.section is not None else None
        self.fused = is_fused(loss_fn)  # the last stage computes it from the LM head itself
        for stage in stages:
            if self.fused and stage.is_last:  # a bound method: not registered as a submodule
                stage.head_loss = loss_fn.__call__
        experts = [self.moe.shard_experts(cfg, s) if self.moe else None for s in stages]
        self.stages = [parallel.shard(s, e) for s, e in zip(stages, experts, strict=True)]
        # The module the recipe trains and saves: the stage, or this rank's stages as one module.
        self.stage = self.stages[0] if len(stages) == 1 else distributed.RankStages(self.stages)
        if self.moe is not None:
            self.moe.use_stages(self.stages, self.stage)
        # a tied LM head: the last stage's copy of the embedding, its gradient summed with the first's
        tied = stages[0].has_tied_head  # every rank: creating the group is a collective
        self.tied_group = distributed.tied_embedding_group(parallel.mesh) if tied else None
        self.tied_copies = [
            s.model.embed_tokens.weight for s in self.stages if s.ties_embedding and s.is_last
        ]
        self.is_first, self.is_last = self.stage.is_first, self.stage.is_last
        # the ranks whose loss and token counts the step reports: the last stage's, once per
        # tensor-parallel group (its ranks all hold the same loss)
        tp = distributed.submesh(parallel.mesh, "tp")
        self.reports = self.is_last and tp.get_local_rank() == 0
        self.loss_fn, self.device = loss_fn, parallel.device
        self.n_micro, self.seq_len = n_micro, seq_len
        self.pad_token_id = pad_token_id
        self.pad = pad_token_id if pad_token_id is not None else 0
        try:
            self.schedule = distributed.build_pipeline_schedule(
                self.stages, n_micro, self._loss, section.pp_schedule,
                device=parallel.device, pp_group=parallel.pp_group, scale_grads=False,
            )  # fmt: skip
        except ValueError as e:  # e.g. 1F1B with fewer micro-batches than stages
            raise config_problem(cfg, "step_scheduler", f"{e} (micro-batches per step)") from e
        self.parallel = parallel
        cp = parallel.cp.size if parallel.cp is not None else 1
        # lengths split evenly into 2 × cp_size chunks (context parallelism's head and tail)
        self.multiple = math.lcm(cfg.get("dataloader.pad_to_multiple_of") or 1, 2 * cp)
        if seq_len is not None and seq_len % self.multiple:
            seq_len = self.seq_len = -(-seq_len // self.multiple) * self.multiple
        try:
            self.lengths = distributed.PipelineSeqLen(self.schedule) if seq_len is None else None
        except NotImplementedError as e:  # an older torch
            raise config_problem(cfg, "dataset", f"{e}: set dataset.seq_length") from e
        padded = f"{seq_len} tokens" if seq_len else "the step's longest batch over all ranks"
        if not seq_len and self.multiple > 1:
            padded += f", rounded up to a multiple of {self.multiple}"
        log.info("pipeline: each step's micro-batches padded to %s", padded)
        if self.fused:
            log.info("pipeline: the last stage computes the fused loss from its LM head")
        for stage in self.stages:
            layers = list(stage.model.layers)
            log.info(
                "pipeline: stage %d of %d holds layers %s-%s (%s schedule, %d micro-batches)",
                stage.stage_index, stage.num_stages, layers[0], layers[-1],
                section.pp_schedule, n_micro,
            )  # fmt: skip

    def _loss(self, output: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.fused:  # the last stage's output is already the loss (fused with the head)
            return output * kwargs["scale"]
        return self.loss_fn(output, labels, kwargs["num_label_tokens"]) * kwargs["scale"]

    def even_out(self, batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """A step's (or validation chunk's) batches, next-token labels already shifted, padded
        at the end of each row to one length, then this rank's part of each (cp).

        The length is `seq_len`, else the longest batch of every rank rounded up to the
        multiple (of `pad_to_multiple_of` and 2 × cp_size); the stages take it where it changed.
        """
        length = self.seq_len
        if self.lengths is not None:
            # A deliberate host sync, one small all-reduce per step: every rank pads to the
            # longest batch of all. The pipeline's P2P needs one length per pipeline, and where
            # torch infers the stages' shapes again it runs the model once more (FSDP2 and
            # expert-parallel collectives over a stage's dp ranks), so all pipelines must
            # change length at the same steps.
            length = distributed.all_reduce_max(step_length(batches, self.multiple))
        padded = []
        for batch in batches:
            if batch["input_ids"].shape[1] > length:  # only a fixed length can be exceeded
                raise ValueError(
                    f"a batch of {batch['input_ids'].shape[1]} tokens is longer than "
                    f"dataset.seq_length {self.seq_len}, which pipeline stages are built for"
                )
            whole = distributed.pad_row_ends(batch, length, self.pad)
            padded.append(self.parallel.split_sequence(whole))
        if self.lengths is not None:  # the stages' shapes: this rank's part of the length
            self.lengths.set(length // (self.parallel.cp.size if self.parallel.cp else 1))
        return padded

    def _micro_batches(self, batches: list[dict[str, torch.Tensor]], rows: int) -> MicroBatches:
        """(input ids, labels, real-token masks, positions) per micro-batch of `batches`
        (`even_out`'s), `rows` rows each; empty ones fill the step. Positions only for rows of
        several documents or parts of rows (their `position_ids`), else None."""
        device = next(self.stages[0].parameters()).device
        length = batches[0]["input_ids"].shape[1]
        inputs, targets, masks = [], [], []
        documents = any("position_ids" in b for b in batches)
        positions: list[torch.Tensor] | None = [] if documents else None
        for i in range(self.n_micro):
            if i < len(batches):
                ids, labels = batches[i]["input_ids"], batches[i]["labels"]
                mask = batches[i].get("attention_mask")  # none: every token of the batch is real
                position = batches[i].get("position_ids")
            else:  # a short last step or validation chunk: a micro-batch without labels
                ids = torch.full((rows, length), self.pad, dtype=torch.long)
                labels = torch.full_like(ids, IGNORE_INDEX)
                mask, position = torch.zeros_like(ids, dtype=torch.bool), None
            pad_rows = rows - ids.shape[0]
            mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
            ids = nn.functional.pad(ids, (0, 0, 0, pad_rows), value=self.pad)
            labels = nn.functional.pad(labels, (0, 0, 0, pad_rows), value=IGNORE_INDEX)
            inputs.append((ids.to(device),))
            targets.append(labels.to(device))
            masks.append(nn.functional.pad(mask, (0, 0, 0, pad_rows)).to(device))
            if positions is not None:
                positions.append(_padded_positions(position, ids.shape, device))
        return inputs, targets, masks, positions

    def _run(
        self, batches: list[dict[str, torch.Tensor]], rows: int, loss_kwargs: dict, train: bool
    ) -> torch.Tensor:
        """The step's (or chunk's) summed loss on the last stage, zero elsewhere."""
        inputs, targets, masks, positions = self._micro_batches(batches, rows)
        losses: list[torch.Tensor] = []
        kwargs: dict[str, Any] = {"arg_mbs": inputs} if self.is_first else {}
        if self.is_last:
            kwargs.update(target_mbs=targets, losses=losses)
        # every stage: each micro-batch's documents, and its real tokens for MoE routers
        keywords: list[dict[str, torch.Tensor]] = [{} for _ in masks]
        if positions is not None:
            for keyword, position in zip(keywords, positions, strict=True):
                keyword["position_ids"] = position
        if self.moe is not None:
            for keyword, mask in zip(keywords, masks, strict=True):
                keyword["token_mask"] = mask
        if self.fused:  # the last stage's loss needs the targets and their count
            for keyword, target in zip(keywords, targets, strict=True):
                keyword.update(labels=target, num_label_tokens=loss_kwargs["num_label_tokens"])
        if any(keywords):
            kwargs["kwarg_mbs"] = keywords
        run = self.schedule.step if train else self.schedule.eval
        if self.moe is None:
            run(loss_kwargs=loss_kwargs, return_outputs=False, **kwargs)
        else:
            with self.moe.pipeline_run(masks, len(batches), loss_kwargs["scale"]):
                run(loss_kwargs=loss_kwargs, return_outputs=False, **kwargs)
        if not losses or not self.reports:
            return torch.zeros((), device=self.device)
        return torch.stack([loss.detach().float() for loss in losses]).sum()

    def train_step(
        self, micro_batches: list[dict[str, torch.Tensor]], num_label_tokens: int, rows: int
    ) -> tuple[torch.Tensor, int]:
        """Forward and backward of one optimizer step over `even_out`'s `micro_batches`:
        (loss sum, real tokens), last stage only.

        The loss is normalised by the global batch's label tokens and × dp × cp, which FSDP2's
        gradient averaging undoes, as without a pipeline.
        """
        scale = self.parallel.averaged_over
        kwargs = {"num_label_tokens": num_label_tokens, "scale": scale}
        loss = self._run(micro_batches, rows, kwargs, train=True) / scale
        if self.tied_group is not None:
            distributed.sum_tied_embedding_grads(self.stages, self.tied_group)
        tokens = (
            sum(real_tokens(b, self.pad_token_id) for b in micro_batches) if self.reports else 0
        )
        return loss, tokens

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict[str, torch.Tensor]], rows: int) -> tuple[float, int]:
        """(summed per-token loss, label tokens) over `batches`, on the last stage (0 elsewhere)."""
        total_loss, total_tokens = 0.0, 0
        for chunk in self._chunks(batches):  # sums, not means
            chunk = self.even_out(chunk)
            total_loss += float(self._run(chunk, rows, {"num_label_tokens": 1, "scale": 1}, False))
            total_tokens += sum(int(count_label_tokens(b["labels"])) for b in chunk)
        return total_loss, total_tokens if self.reports else 0

    def _chunks(
        self, batches: Iterable[dict[str, torch.Tensor]]
    ) -> Iterator[list[dict[str, torch.Tensor]]]:
        """`batches` with next-token labels, `n_micro` at a time (the last chunk may be short)."""
        chunk: list[dict[str, torch.Tensor]] = []
        for batch in batches:
            chunk.append({**batch, "labels": shift_labels(batch["labels"])})
            if len(chunk) == self.n_micro:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _padded_positions(
    position: torch.Tensor | None, shape: torch.Size, device: torch.device
) -> torch.Tensor:
    """`position` (a batch's `position_ids`, or None: one document per row) with rows of
    padding added to `shape` (each counting from 0, a document that no real token sees)."""
    rows, length = shape
    if position is None:
        return torch.arange(length, device=device).expand(rows, length).contiguous()
    filler = torch.arange(length, dtype=position.dtype).expand(rows - position.shape[0], length)
    return torch.cat([position, filler]).to(device)
