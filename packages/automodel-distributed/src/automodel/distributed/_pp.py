"""Pipeline parallelism for Hugging Face decoders with ``torch.distributed.pipelining``.

``split_decoder_into_stages`` cuts a Llama-style causal LM (``model.embed_tokens``,
``model.layers``, ``model.norm``, ``model.rotary_emb``, ``lm_head``) into ``DecoderStage``
modules (`_pp_stage`, which says what a stage computes and takes): the first stage embeds token
ids, every stage runs its slice of the layers, the last one applies the final norm and the LM
head and returns logits. A tied LM head is copied to the last stage under the embedding's
name; call ``sum_tied_embedding_grads`` after each backward to keep the copies equal.

``build_pipeline_schedule`` wraps the stages of this rank in ``PipelineStage`` objects and
returns torch's schedule (``ScheduleGPipe``, ``Schedule1F1B``, or a multi-stage one).
``pipeline_stage_count`` says how many stages a schedule wants for a model, and
``RankStages`` shows a rank's several stages (interleaved schedules) as one module under the
model's own parameter names, for the optimizer and checkpoints.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import (
    PipelineScheduleMulti,
    PipelineScheduleSingle,
    get_schedule_class,
)
from torch.distributed.tensor import DTensor

from ._pp_stage import DecoderStage, RankStages
from ._tp import hf_tp_plan

SCHEDULES = {
    "gpipe": "GPipe",
    "1f1b": "1F1B",
    "interleaved_1f1b": "Interleaved1F1B",
    "interleaved1f1b": "Interleaved1F1B",
    "looped_bfs": "LoopedBFS",
    "loopedbfs": "LoopedBFS",
}


def is_multi_stage(schedule: str) -> bool:
    """Whether ``schedule`` runs several stages per rank (interleaved 1F1B, looped BFS, ...)."""
    return issubclass(
        get_schedule_class(SCHEDULES.get(schedule.lower(), schedule)), PipelineScheduleMulti
    )


def pipeline_stage_count(
    num_layers: int,
    pp_size: int,
    schedule: str,
    layers_per_stage: int | None = None,
    rounding: str | None = None,
) -> int:
    """How many stages to cut a model of ``num_layers`` decoder layers into for ``schedule``.

    Without ``layers_per_stage``: one stage per rank, two for a multi-stage schedule. With it:
    ``ceil(num_layers / layers_per_stage)`` stages, which must be a multiple of ``pp_size``
    unless ``rounding`` (``"up"`` or ``"down"``) says which multiple to take; a single-stage
    schedule needs exactly one stage per rank, a multi-stage one at least two.
    """
    multi = is_multi_stage(schedule)
    if layers_per_stage is None:
        return pp_size * (2 if multi else 1)
    if layers_per_stage < 1:
        raise ValueError(f"layers_per_stage must be at least 1, got {layers_per_stage}")
    stages = -(-num_layers // layers_per_stage)
    if stages % pp_size:
        if rounding == "up":
            stages += pp_size - stages % pp_size
        elif rounding == "down":
            stages -= stages % pp_size
        else:
            raise ValueError(
                f"{num_layers} layers at {layers_per_stage} per stage make {stages} stages, not a "
                f"multiple of pp_size {pp_size}: change layers_per_stage, or round the stage "
                "count up or down"
            )
    per_rank = stages // pp_size
    if not multi and per_rank != 1:
        raise ValueError(
            f"schedule {schedule!r} runs one stage per rank, but {num_layers} layers at "
            f"{layers_per_stage} per stage give {per_rank} per rank: use at least "
            f"{-(-num_layers // pp_size)} layers per stage, or an interleaved schedule"
        )
    if multi and per_rank < 2:
        raise ValueError(
            f"schedule {schedule!r} runs at least two stages per rank, but {num_layers} layers "
            f"at {layers_per_stage} per stage give {max(per_rank, 0)}: use at most "
            f"{num_layers // (2 * pp_size)} layers per stage"
        )
    return stages


def _pp_rank_and_size(
    pp: DeviceMesh | dist.ProcessGroup | None,
) -> tuple[int, int, dist.ProcessGroup]:
    if isinstance(pp, DeviceMesh):
        if pp.ndim != 1:
            raise ValueError(f"pass the 1-D pipeline mesh (mesh['pp']), got a {pp.ndim}-D mesh")
        group = pp.get_group()
    else:
        group = pp if pp is not None else dist.group.WORLD
    return dist.get_rank(group), dist.get_world_size(group), group


def _layer_split(
    num_layers: int, num_stages: int, layers_per_stage: Sequence[int] | None
) -> list[range]:
    if layers_per_stage is None:
        per, extra = divmod(num_layers, num_stages)
        layers_per_stage = [per + (1 if s < extra else 0) for s in range(num_stages)]
    if len(layers_per_stage) != num_stages or sum(layers_per_stage) != num_layers:
        raise ValueError(
            f"layers_per_stage={list(layers_per_stage)} must have {num_stages} entries summing "
            f"to the model's {num_layers} layers"
        )
    if min(layers_per_stage) < 1:
        raise ValueError(f"{num_layers} layers cannot fill {num_stages} pipeline stages")
    bounds = [0]
    for n in layers_per_stage:
        bounds.append(bounds[-1] + n)
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


def split_decoder_into_stages(
    model: nn.Module,
    pp: DeviceMesh | dist.ProcessGroup | None = None,
    num_stages: int | None = None,
    *,
    layers_per_stage: Sequence[int] | None = None,
) -> list[DecoderStage]:
    """This rank's pipeline stages of a Hugging Face causal LM, and nothing else of it.

    ``pp``: the 1-D pipeline mesh (``mesh["pp"]``) or process group (default: the world).
    ``num_stages`` (default: the pipeline size) must be a multiple of the pipeline size; stage
    ``s`` lives on pipeline rank ``s % pp_size`` (loop order: one stage per rank for GPipe /
    1F1B, several for interleaved schedules). Layers are split evenly unless
    ``layers_per_stage`` says otherwise.

    The model is consumed: the modules of this rank's stages move into the returned stages and
    the model keeps none of its layers, so the other stages' memory is freed with it.
    """
    rank, size, group = _pp_rank_and_size(pp)
    num_stages = size if num_stages is None else num_stages
    if num_stages % size:
        raise ValueError(f"num_stages={num_stages} is not a multiple of the pipeline size {size}")
    base = getattr(model, "model", None)
    lm_head = getattr(model, "lm_head", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if base is None or lm_head is None or not all(hasattr(base, a) for a in needed):
        raise NotImplementedError(
            f"split_decoder_into_stages needs a Llama-style causal LM (model.embed_tokens, "
            f"model.layers, model.norm, model.rotary_emb, lm_head); {type(model).__name__} is not"
        )
    streams = getattr(getattr(model, "config", None), "hc_mult", 1) or 1
    if streams > 1:  # hyper-connections (DeepSeek-V4): [B, S, streams, D] between layers
        raise NotImplementedError(
            f"{type(model).__name__} passes {streams} residual streams between its layers "
            "(hc_mult); pipeline stages pass one hidden state"
        )
    splits = _layer_split(len(base.layers), num_stages, layers_per_stage)
    tp_plan = hf_tp_plan(model)
    stages = [
        DecoderStage(base, lm_head, splits[s], s, num_stages, group, tp_plan)
        for s in range(rank, num_stages, size)
    ]
    base.layers = nn.ModuleList()  # drop every layer reference the model held
    if not any(s.is_first for s in stages):
        base.embed_tokens = None
    if not any(s.is_last for s in stages):
        base.norm = None
        model.lm_head = None
    return stages


def tied_embedding_group(mesh: DeviceMesh) -> dist.ProcessGroup:
    """This rank's group of the first and last pipeline stage's ranks with its other coordinates.

    They sum the gradient of a tied input/output embedding (``sum_tied_embedding_grads``).
    ``mesh``: the whole mesh of ``build_mesh`` (``"pp"`` outermost). Every rank must call this.
    """
    if not mesh.mesh_dim_names or mesh.mesh_dim_names[0] != "pp":
        raise ValueError(f"expected a mesh with 'pp' outermost, got dims {mesh.mesh_dim_names}")
    ranks = mesh.mesh.reshape(mesh.mesh.shape[0], -1)  # column j: one pipeline's ranks
    ends = [[int(ranks[0, j]), int(ranks[-1, j])] for j in range(ranks.shape[1])]
    group, _ = dist.new_subgroups_by_enumeration(ends)
    return group


def sum_tied_embedding_grads(stages: Sequence[DecoderStage], group: dist.ProcessGroup) -> None:
    """Add the first and last stage's gradients of a tied embedding into both (after backward).

    The two stages' shards of the weight line up (both sharded alike over their data-parallel
    ranks), so the local gradient shards are summed over ``tied_embedding_group``.
    """
    for stage in stages:
        weight = stage.model.embed_tokens.weight if stage.ties_embedding else None
        if weight is not None and weight.requires_grad:  # frozen (LoRA, freeze): nothing to sum
            grad = weight.grad
            if grad is None:
                raise RuntimeError("the tied embedding has no gradient: run the backward first")
            dist.all_reduce(grad.to_local() if isinstance(grad, DTensor) else grad, group=group)


def build_pipeline_schedule(
    stages: Sequence[nn.Module | PipelineStage] | nn.Module | PipelineStage,
    n_microbatches: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    schedule: str = "1f1b",
    *,
    device: torch.device | str | None = None,
    pp_group: dist.ProcessGroup | None = None,
    scale_grads: bool = True,
):
    """Torch's pipeline schedule over this rank's ``stages``.

    ``stages``: ``DecoderStage`` modules from ``split_decoder_into_stages`` (or ready
    ``PipelineStage`` objects). ``schedule``: ``"gpipe"``, ``"1f1b"`` (one stage per rank),
    ``"interleaved_1f1b"`` or ``"looped_bfs"`` (several), or any name torch's
    ``get_schedule_class`` knows. With ``scale_grads`` (default) gradients are divided by
    ``n_microbatches``, so a per-microbatch mean ``loss_fn`` gives whole-batch mean gradients.

    Run it with ``schedule.step(input_ids)`` on the first stage's rank,
    ``schedule.step(target=labels, losses=losses)`` on the last one's, ``schedule.step()``
    elsewhere.
    """
    if isinstance(stages, nn.Module | PipelineStage):
        stages = [stages]
    pipeline_stages = []
    for stage in stages:
        if isinstance(stage, PipelineStage):
            pipeline_stages.append(stage)
            continue
        stage_device = device
        if stage_device is None:
            stage_device = next(stage.parameters()).device
        if isinstance(stage_device, torch.device) and stage_device.type == "meta":
            raise ValueError("materialize the stage before building a schedule (device is meta)")
        pipeline_stages.append(
            PipelineStage(
                stage,
                stage.stage_index,
                stage.num_stages,
                torch.device(stage_device),
                group=pp_group if pp_group is not None else getattr(stage, "pp_group", None),
            )
        )
    cls = get_schedule_class(SCHEDULES.get(schedule.lower(), schedule))
    kwargs = {"n_microbatches": n_microbatches, "loss_fn": loss_fn, "scale_grads": scale_grads}
    if issubclass(cls, PipelineScheduleSingle):
        if len(pipeline_stages) != 1:
            raise ValueError(
                f"schedule {schedule!r} runs one stage per rank; this rank has "
                f"{len(pipeline_stages)} (use interleaved_1f1b or looped_bfs)"
            )
        return cls(pipeline_stages[0], **kwargs)
    if not issubclass(cls, PipelineScheduleMulti):
        raise ValueError(f"unsupported pipeline schedule {schedule!r}")
    return cls(pipeline_stages, **kwargs)


__all__ = [
    "DecoderStage",
    "RankStages",
    "build_pipeline_schedule",
    "is_multi_stage",
    "pipeline_stage_count",
    "split_decoder_into_stages",
]
