"""The device mesh: sizes from a MeshConfig, built in one place, with flattened data-parallel views.

Dimensions, outermost first: ``("pp", "dp_replicate", "dp_shard", "cp", "tp")``. Every dimension
is present (size 1 when unused), so code can always slice ``mesh["tp"]``. Flattened views:

* ``"dp"``: dp_replicate × dp_shard, the ranks that read different data;
* ``"dp_shard_cp"``: dp_shard × cp, what FSDP2 shards parameters over;
* ``"dp_cp"``: dp_replicate × dp_shard × cp, what gradients are reduced over.

With ``ep_size`` > 1 the data-parallel ranks are also split for expert parallelism:
``"ep"`` (consecutive ranks of ``"dp_cp"``, cp innermost, that share their experts out) and
``"ep_replicas"`` (every rank holding the same experts, one per ep group; their expert
gradients are summed). With ``cp_size`` > 1 an ep group takes the cp ranks of a dp rank first,
so ``ep_size`` need only divide dp × cp (as NeMo AutoModel lays expert parallelism out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")
FLATTENED_DIMS = {
    "dp": ("dp_replicate", "dp_shard"),
    "dp_shard_cp": ("dp_shard", "cp"),
    "dp_cp": ("dp_replicate", "dp_shard", "cp"),
}


class MeshError(ValueError):
    """Parallel sizes that do not fit the number of processes.

    ``key``: the ``MeshConfig`` field at fault when it is one field (``"ep_size"``), or None
    when it is their product against the world size.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass
class MeshConfig:
    """Sizes of each parallel dimension; their product is the world size.

    ``dp_size`` is the whole data-parallel degree (dp_replicate × dp_shard); ``"auto"`` takes
    what is left: world size / (tp_size × cp_size × pp_size). ``dp_replicate_size`` > 1 turns
    FSDP2 into HSDP: parameters sharded over dp_size / dp_replicate_size ranks and replicated
    dp_replicate_size times. ``ep_size`` > 1 shares the MoE experts out over groups of that many
    data- and context-parallel ranks (it divides dp_size × cp_size; no extra processes).
    """

    dp_size: int | Literal["auto"] = "auto"
    dp_replicate_size: int = 1
    tp_size: int = 1
    cp_size: int = 1
    pp_size: int = 1
    ep_size: int = 1

    def __post_init__(self) -> None:
        if self.dp_size != "auto":
            _check_positive("dp_size", self.dp_size, "a positive integer or 'auto'")
        for name in ("dp_replicate_size", "tp_size", "cp_size", "pp_size", "ep_size"):
            _check_positive(name, getattr(self, name), "a positive integer")


def _check_positive(name: str, value: object, expected: str, config_field: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        key = name if config_field else None
        raise MeshError(f"{name} must be {expected}, got {value!r}", key=key)


def resolve_sizes(config: MeshConfig, world_size: int) -> dict[str, int]:
    """The size of every mesh dimension, in MESH_DIMS order, then ``ep``, for ``world_size``.

    Raises MeshError, showing the arithmetic, when the sizes do not multiply to the world size
    or dp_replicate_size does not divide dp_size.
    """
    _check_positive("world_size", world_size, "a positive integer", config_field=False)
    tp, cp, pp = config.tp_size, config.cp_size, config.pp_size
    if config.dp_size == "auto":
        model_parallel = tp * cp * pp
        if world_size % model_parallel:
            raise MeshError(
                f"pp_size {pp} × cp_size {cp} × tp_size {tp} = {model_parallel} does not divide "
                f"the world size {world_size} (processes launched), so dp_size='auto' has no "
                f"integer value; launch a multiple of {model_parallel} processes or change the "
                "parallel sizes"
            )
        dp = world_size // model_parallel
    else:
        dp = config.dp_size
        product = pp * dp * cp * tp
        if product != world_size:
            raise MeshError(
                f"pp_size {pp} × dp_size {dp} × cp_size {cp} × tp_size {tp} = {product}, but the "
                f"world size is {world_size} (processes launched); the product must equal the "
                "number of processes (set dp_size='auto' to take what the other sizes leave)"
            )
    replicate = config.dp_replicate_size
    if dp % replicate:
        raise MeshError(
            f"dp_replicate_size {replicate} does not divide dp_size {dp}: dp_size = "
            f"dp_replicate_size × dp_shard_size, so dp_shard_size would be {dp}/{replicate}",
            key="dp_replicate_size",
        )
    ep = config.ep_size
    if (dp * cp) % ep:
        raise MeshError(
            f"ep_size {ep} does not divide dp_size {dp} × cp_size {cp} = {dp * cp}: the experts "
            "are shared out over groups of ep_size data- and context-parallel ranks, so "
            f"dp_size × cp_size must be a multiple of {ep}",
            key="ep_size",
        )
    sizes = {"pp": pp, "dp_replicate": replicate, "dp_shard": dp // replicate, "cp": cp, "tp": tp}
    return {**sizes, "ep": ep}


def _default_device_type() -> str:
    if dist.is_available() and dist.is_initialized():
        return "cuda" if "nccl" in str(dist.get_backend()) else "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _ensure_process_group(world_size: int, device_type: str) -> None:
    """A one-process group (in-memory store) when none exists and the world is one process."""
    if dist.is_initialized():
        return
    if world_size != 1:
        raise MeshError(
            f"a mesh over {world_size} processes needs an initialised process group: launch with "
            "torchrun and call automodel.distributed.init_distributed() first"
        )
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def build_mesh(
    config: MeshConfig | None = None,
    world_size: int | None = None,
    device_type: str | None = None,
    ranks: Sequence[int] | None = None,
) -> DeviceMesh:
    """Build the device mesh for ``config`` (default: pure data parallel over every process).

    ``world_size`` defaults to the process group's size (1 without one); ``device_type`` to
    "cuda" with an nccl group (or CUDA and no group) and "cpu" otherwise. A single process
    without a process group gets a one-process group (gloo or nccl, in-memory store), so FSDP2
    and DDP work there too; ``destroy_distributed()`` removes it.

    ``ranks``: the global ranks the mesh spans, in mesh order (default: every process), e.g.
    ``range(2, 4)`` for a model on processes 2 and 3 beside another model's mesh on 0 and 1.
    Every process of the group calls it even so (torch creates process groups collectively);
    on a process outside ``ranks`` the mesh has no coordinate (``mesh.get_coordinate()`` is None).
    """
    config = config if config is not None else MeshConfig()
    if ranks is not None:
        return _sub_world_mesh(config, list(ranks), world_size, device_type)
    if dist.is_available() and dist.is_initialized():
        actual = dist.get_world_size()
        if world_size is not None and world_size != actual:
            raise MeshError(
                f"world_size={world_size} was asked for, but the process group has {actual} "
                "processes"
            )
        world_size = actual
    world_size = 1 if world_size is None else world_size
    sizes = resolve_sizes(config, world_size)
    device_type = device_type or _default_device_type()
    _ensure_process_group(world_size, device_type)
    mesh = init_device_mesh(
        device_type, tuple(sizes[d] for d in MESH_DIMS), mesh_dim_names=MESH_DIMS
    )
    _add_views(mesh, sizes)
    return mesh


def _sub_world_mesh(
    config: MeshConfig, ranks: list[int], world_size: int | None, device_type: str | None
) -> DeviceMesh:
    """The mesh over `ranks` of an initialised process group (see build_mesh).

    torch cannot slice or flatten a mesh on a process outside it, so each flattened view must
    be a plain dimension here: at most one of its dimensions larger than 1.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise MeshError(
            "a mesh over some of the processes needs an initialised process group: launch with "
            "torchrun and call automodel.distributed.init_distributed() first"
        )
    processes = dist.get_world_size()
    if not ranks or len(set(ranks)) != len(ranks) or not all(0 <= r < processes for r in ranks):
        raise MeshError(
            f"ranks must be distinct global ranks of the {processes} processes, got {ranks}"
        )
    if world_size is not None and world_size != len(ranks):
        raise MeshError(f"world_size={world_size} was asked for, but ranks has {len(ranks)}")
    sizes = resolve_sizes(config, len(ranks))
    unsupported = {
        "dp_replicate_size > 1": sizes["dp_replicate"] > 1,
        "ep_size > 1": sizes["ep"] > 1,
        "cp_size > 1 with dp_size > 1": sizes["cp"] > 1 and sizes["dp_shard"] > 1,
    }
    for what, found in unsupported.items():
        if found:
            message = f"{what} is not supported yet on a mesh over some of the processes"
            raise MeshError(message, key=what.split()[0])
    device_type = device_type or _default_device_type()
    layout = torch.tensor(ranks, dtype=torch.int).view(tuple(sizes[d] for d in MESH_DIMS))
    mesh = DeviceMesh(device_type, layout, mesh_dim_names=MESH_DIMS)
    views = {}
    if mesh.get_coordinate() is not None:
        for name, dims in FLATTENED_DIMS.items():  # each the one of its dims larger than 1
            views[name] = mesh[max(dims, key=lambda d: sizes[d])]
    setattr(mesh, _VIEWS_ATTR, views)
    return mesh


# The flattened views of a mesh from build_mesh, kept on the mesh object: torch deprecates
# slicing a flattened dimension out of the root mesh ("bookkeep the flattened mesh directly").
_VIEWS_ATTR = "_automodel_views"
HSDP_VIEW = "dp_replicate,dp_shard_cp"  # the 2-D mesh FSDP2 gets for HSDP


def _add_views(mesh: DeviceMesh, sizes: dict[str, int]) -> None:
    views: dict[str, DeviceMesh] = {}
    if hasattr(DeviceMesh, "_flatten"):
        for name, dims in FLATTENED_DIMS.items():
            views[name] = mesh[dims]._flatten(name)
        if sizes["dp_replicate"] > 1 and hasattr(DeviceMesh, "_unflatten"):
            # HSDP: (dp_replicate, dp_shard_cp), the dp_cp ranks in the same order
            shard_cp = sizes["dp_shard"] * sizes["cp"]
            views[HSDP_VIEW] = views["dp_cp"]._unflatten(
                0, (sizes["dp_replicate"], shard_cp), ("dp_replicate", "dp_shard_cp")
            )
        if sizes["ep"] > 1:  # dp_cp (cp innermost) split into (replicas, ep)
            ep, dp_cp = sizes["ep"], views["dp_cp"].size()
            split = views["dp_cp"]._unflatten(0, (dp_cp // ep, ep), ("ep_replicas", "ep"))
            views["ep"], views["ep_replicas"] = split["ep"], split["ep_replicas"]
    setattr(mesh, _VIEWS_ATTR, views)


def submesh(mesh: DeviceMesh, name: str) -> DeviceMesh:
    """A dimension of ``mesh`` by name, flattened views (``"dp"``, ``"dp_shard_cp"``,
    ``"dp_cp"``, and ``"ep"``/``"ep_replicas"`` with ep_size > 1) included; KeyError when the
    mesh has no such dimension."""
    views = getattr(mesh, _VIEWS_ATTR, None) or {}
    if name in views:
        return views[name]
    names = tuple(name.split(","))
    try:
        return mesh[names if len(names) > 1 else name]
    except (KeyError, RuntimeError, ValueError) as exc:
        raise KeyError(
            f"the mesh has no dimension {name!r} (dims: {mesh.mesh_dim_names}); build it with "
            "automodel.distributed.build_mesh"
        ) from exc


def _sub(mesh: DeviceMesh, name: str) -> DeviceMesh | None:
    """``submesh(mesh, name)``, or None when the mesh has no such dimension."""
    try:
        return submesh(mesh, name)
    except KeyError:
        return None


def dp_mesh(mesh: DeviceMesh | None, *, include_cp: bool = False) -> DeviceMesh | None:
    """The 1-D data-parallel sub-mesh (``"dp"``, or ``"dp_cp"`` with ``include_cp``).

    A 1-D mesh without those names is taken to be all data parallel. None for no mesh.
    """
    if mesh is None:
        return None
    name = "dp_cp" if include_cp else "dp"
    sub = _sub(mesh, name)
    if sub is not None:
        return sub
    if mesh.ndim == 1:
        return mesh
    raise MeshError(
        f"the mesh has no {name!r} dimension (dims: {mesh.mesh_dim_names}); build it with "
        "automodel.distributed.build_mesh"
    )


def dp_group(mesh: DeviceMesh | None, *, include_cp: bool = False) -> dist.ProcessGroup | None:
    """The process group of the data-parallel ranks; None (the default group) without a mesh.

    ``include_cp=True`` gives the group gradients are averaged over (dp × cp): the group to
    count label tokens over for the exact loss normalisation.
    """
    sub = dp_mesh(mesh, include_cp=include_cp)
    return None if sub is None else sub.get_group()


def dp_rank_and_size(mesh: DeviceMesh | None) -> tuple[int, int]:
    """(rank, size) in the data-parallel group: what a dataloader shards the data over.

    Ranks that differ only in their cp, tp or pp coordinate get the same rank here: they must
    read the same samples. Without a mesh: the global rank and world size (0, 1 without a
    process group).
    """
    sub = dp_mesh(mesh)
    if sub is None:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    return sub.get_local_rank(), sub.size()
