"""Parallelism for the recipes: process group, device mesh and strategy (automodel.distributed)."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from automodel.core.config import ConfigError, ConfigNode
from automodel.distributed import (
    AllGatherContextParallel,
    MeshConfig,
    MeshError,
    Strategy,
    all_reduce_sum,
    apply_tensor_parallel,
    build_mesh,
    build_strategy,
    dp_group,
    dp_rank_and_size,
    global_label_tokens,
    init_distributed,
    no_sync,
    resolve_sizes,
    submesh,
)

from ._errors import config_problem
from ._sections import Distributed, document_rows, read_section

log = logging.getLogger("automodel.recipes")

_STRATEGIES = ("fsdp2", "ddp", "none")
_OPTIONS = (
    "mp_param_dtype",
    "mp_reduce_dtype",
    "reshard_after_forward",
    "cpu_offload",
    "activation_checkpointing",
)
_DEVICES = ("auto", "cpu", "cuda")


def _world_size() -> int:
    """The number of processes torchrun launched (1 without torchrun); no process group needed."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _problem(cfg: ConfigNode, name: str, key: str, message: str) -> ConfigError:
    return config_problem(cfg, f"{name}.{key}", message)


def read_distributed(
    cfg: ConfigNode, world_size: int | None = None, name: str = "distributed"
) -> tuple[Distributed, int]:
    """The checked `distributed:` section with its strategy filled in, and the dp size.

    Needs no process group (the world size comes from the torchrun environment), so the batch
    arithmetic and `automodel validate` can use it before anything is built. `world_size`: the
    processes the model spans (default: every process launched); `name`: the section (a
    second model's own layout, e.g. kd.llm's `teacher_distributed:`).
    """
    section = read_section(cfg, name, Distributed)
    world = _world_size() if world_size is None else world_size
    if section.device not in _DEVICES:
        raise _problem(
            cfg, name, "device", f"expected one of {', '.join(_DEVICES)}, got {section.device!r}"
        )
    try:  # first: a size that the processes cannot hold is the root of any other complaint
        sizes = resolve_sizes(_mesh_config(section), world)
    except MeshError as e:  # a product that does not fit the processes: dp_size is "auto"'s
        raise _problem(cfg, name, e.key or "dp_size", str(e)) from e
    strategy = section.strategy or "none"  # `none` on the command line arrives as null
    if strategy == "auto":
        strategy = "fsdp2" if world > 1 else "none"
    if strategy not in _STRATEGIES:
        raise _problem(
            cfg,
            name,
            "strategy",
            f"unknown strategy {strategy!r}; expected auto, {', '.join(_STRATEGIES)}",
        )
    if strategy == "none" and world > 1:
        raise _problem(
            cfg, name, "strategy", f"strategy none cannot train on {world} processes (each "
            "would train its own model); use fsdp2 or ddp, or launch one process",
        )  # fmt: skip
    if strategy != "fsdp2" and section.dp_replicate_size != 1:
        raise _problem(cfg, name, "dp_replicate_size", "replication (HSDP) needs strategy fsdp2")
    if strategy != "fsdp2" and section.tp_size != 1:
        raise _problem(
            cfg,
            name,
            "tp_size",
            f"tensor parallelism composes with strategy fsdp2 only, not {strategy}",
        )
    if section.sequence_parallel and section.tp_size == 1:
        raise _problem(cfg, name, "sequence_parallel", "sequence parallelism needs tp_size > 1")
    if section.pp_size != 1 and strategy != "fsdp2":
        raise _problem(
            cfg,
            name,
            "pp_size",
            f"pipeline parallelism composes with strategy fsdp2 only, not {strategy}",
        )
    if section.pp_size != 1 and section.sequence_parallel:
        message = (
            "sequence parallelism with pp_size > 1 is not supported yet (the stages would hand "
            "each other sequence shards); set it false to keep tensor parallelism in the stages"
        )
        raise _problem(cfg, name, "sequence_parallel", message)
    if section.ep_size != 1 and section.tp_size != 1:
        raise _problem(
            cfg, name, "ep_size", "expert parallelism with tp_size > 1 is not supported yet"
        )
    if section.ep_size != 1 and "moe" not in cfg:
        raise _problem(cfg, name, "ep_size", "expert parallelism needs a moe: section (MoE blocks)")
    section = Distributed(**{**section.__dict__, "strategy": strategy})
    return section, sizes["dp_replicate"] * sizes["dp_shard"]


def _mesh_config(section: Distributed) -> MeshConfig:
    return MeshConfig(
        dp_size=section.dp_size,
        dp_replicate_size=section.dp_replicate_size,
        tp_size=section.tp_size,
        cp_size=section.cp_size,
        pp_size=section.pp_size,
        ep_size=section.ep_size,
    )


@dataclass
class Parallel:
    """Where this process stands in the data-parallel run, and how the model is spread."""

    device: torch.device
    world_size: int
    dp_rank: int
    dp_size: int
    mesh: Any  # DeviceMesh | None
    group: Any  # the process group gradients are averaged over (None: one process)
    strategy: Strategy
    defer_grad_sync: bool = False  # micro-batches but the last of a step under no_sync
    sequence_parallel: bool = False  # with tensor parallelism (mesh["tp"] larger than 1)
    ep_size: int = 1  # expert parallelism: dp × cp ranks that share each MoE layer's experts out
    pp_group: Any = None  # the pipeline-parallel group (pp_size > 1); None without a pipeline
    cp: AllGatherContextParallel | None = None  # cp_size > 1: sequences split over the cp ranks
    # every process of this model: None is the default group (all of them); a group when the
    # model spans some of the processes (setup_parallel's `ranks`)
    run_group: Any = None

    @property
    def averaged_over(self) -> int:
        """The ranks FSDP2/DDP average gradients over (dp × cp): the loss is scaled by it."""
        return self.dp_size * (self.cp.size if self.cp is not None else 1)

    def split_sequence(
        self, batch: dict[str, Any], pad_token_id: int | None = None
    ) -> dict[str, Any]:
        """This rank's part of `batch` along the sequence (the batch itself without cp)."""
        if self.cp is None:
            return batch
        return self.cp.shard_batch(batch, pad_token_id or 0)

    def shard(
        self,
        model: nn.Module,
        ignored_params: set[nn.Parameter] | None = None,
        tp_plan: dict[str, Any] | None = None,
    ) -> nn.Module:
        """The model spread over the mesh (TP, then FSDP2 in place or DDP wrapped), on the device.

        `ignored_params` (expert-parallel weights) are left out of FSDP2/DDP. `tp_plan`: the
        tensor-parallel plan (default: the model's, `automodel.distributed.tp_plan_for`).
        """
        if self.mesh is not None:
            tp_mesh = submesh(self.mesh, "tp")
            if tp_mesh.size() > 1:
                model = apply_tensor_parallel(model, tp_mesh, self.sequence_parallel, tp_plan)
            model = self.strategy.parallelize(model, self.mesh, ignored_params=ignored_params)
        else:
            model = self.strategy.parallelize(model)
        return model.to(self.device)

    def micro_batch(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """The context of one micro-batch's forward and backward: no_sync unless `last`."""
        if self.defer_grad_sync and not last:
            return no_sync(model)
        return contextlib.nullcontext()

    def label_tokens(self, count: int) -> int | torch.Tensor:
        """The step's label tokens: this rank's `count` summed over the ranks gradients are
        averaged over; with several, a tensor on the device that the host does not wait for."""
        if self.group is None:
            return count
        on_device = torch.full((), count, dtype=torch.int64, device=self.device)  # no host copy
        return global_label_tokens(on_device, self.group)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """`values` summed over the data-parallel ranks (itself with one process).

        With a pipeline, over every rank: only the last stages count loss and tokens.
        """
        return all_reduce_sum(values, self.group if self.pp_group is None else self.run_group)


def strategy_of(
    cfg: ConfigNode,
    section: Distributed,
    unused_parameters: bool = False,
    name: str = "distributed",
) -> Strategy:
    """The data-parallel strategy `section` (read by `read_distributed` from section `name`)
    asks for, with its options; no process group needed."""
    options = {k: getattr(section, k) for k in _OPTIONS if getattr(section, k) is not None}
    unused = section.find_unused_parameters
    if unused is not None or (unused_parameters and section.strategy == "ddp"):
        options["find_unused_parameters"] = unused_parameters if unused is None else unused
    try:
        return build_strategy(section.strategy, **options)
    except (TypeError, ValueError) as e:
        raise config_problem(cfg, name, str(e)) from e


def setup_parallel(
    cfg: ConfigNode,
    unused_parameters: bool = False,
    name: str = "distributed",
    ranks: range | None = None,
) -> Parallel | None:
    """Initialise the process group from the torchrun environment, the mesh and the strategy.

    `unused_parameters`: the recipe's default for DDP's `find_unused_parameters`. `ranks`: the
    processes the model spans, laid out by the section `name` (default: every process, by
    `distributed:`). Every process calls it then (the mesh's process groups are created by
    all of them), and those outside `ranks` get None.
    """
    world = _world_size() if ranks is None else len(ranks)
    section, dp_size = read_distributed(cfg, world, name)
    strategy = strategy_of(cfg, section, unused_parameters, name)
    backend = "gloo" if section.device == "cpu" else "auto"
    env = init_distributed(backend=backend, timeout_minutes=section.timeout_minutes)
    device = env.device if section.device == "auto" else torch.device(section.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if ranks is None and world == 1 and section.strategy == "none":
        return Parallel(device, 1, 0, 1, None, None, strategy)
    mesh = build_mesh(_mesh_config(section), device_type=device.type, ranks=ranks)
    run_group = None if ranks is None else dist.new_group(list(ranks))
    if mesh.get_coordinate() is None:
        return None  # another model's process
    dp_rank, dp_size = dp_rank_and_size(mesh)
    defer = section.defer_grad_sync
    defer = section.strategy == "ddp" if defer is None else defer  # fsdp2 would keep full grads
    tp = f", tensor parallel {section.tp_size}" if section.tp_size > 1 else ""
    tp += " + sequence parallel" if section.sequence_parallel else ""
    tp += f", expert parallel {section.ep_size}" if section.ep_size > 1 else ""
    tp += f", pipeline parallel {section.pp_size}" if section.pp_size > 1 else ""
    tp += f", context parallel {section.cp_size}" if section.cp_size > 1 else ""
    of = "" if ranks is None else f" {ranks.start}-{ranks.stop - 1} of {env.world_size}"
    label = "data parallel" + ("" if name == "distributed" else f" ({name})")
    log.info(
        "%s: %s over %d process(es)%s (rank %d of %d) on %s%s%s",
        label, section.strategy, world, of, dp_rank, dp_size, device, tp,
        ", gradients reduced once per step" if defer else "",
    )  # fmt: skip
    group = dp_group(mesh, include_cp=True)
    return Parallel(
        device, world, dp_rank, dp_size, mesh, group, strategy, defer,
        section.sequence_parallel, section.ep_size,
        submesh(mesh, "pp").get_group() if section.pp_size > 1 else None,
        _context_parallel(cfg, mesh) if section.cp_size > 1 else None,
        run_group,
    )  # fmt: skip


def _context_parallel(cfg: ConfigNode, mesh: Any) -> AllGatherContextParallel:
    """The cp group's sequence splitter; packed and padding-free rows keep their documents apart."""
    return AllGatherContextParallel(submesh(mesh, "cp"), documents=bool(document_rows(cfg)))
