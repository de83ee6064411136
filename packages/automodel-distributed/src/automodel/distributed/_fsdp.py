"""FSDP2 (``fully_shard``) per decoder block then the root; HSDP when the mesh replicates."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)

from ._dtype import parse_dtype
from ._mesh import HSDP_VIEW, MeshError, _sub, build_mesh, submesh
from ._strategy import apply_activation_checkpointing, decoder_blocks

log = logging.getLogger("automodel.distributed")


def _dtype(name: str | torch.dtype | None, option: str) -> torch.dtype | None:
    """None (keep as stored) or an accepted dtype name / torch.dtype -> torch.dtype | None."""
    return None if name is None else parse_dtype(name, option)


def fsdp_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The mesh FSDP2 shards over: ``dp_shard_cp``, or 2-D ``(dp_replicate, dp_shard_cp)`` (HSDP)
    when dp_replicate > 1. A 1-D mesh without these names is used as it is."""
    shard = _sub(mesh, "dp_shard_cp")
    if shard is None:
        if mesh.ndim == 1:
            return mesh
        raise MeshError(
            "FSDP2 needs a mesh built by automodel.distributed.build_mesh (with a 'dp_shard_cp' "
            f"dimension); got dims {mesh.mesh_dim_names}"
        )
    replicate = _sub(mesh, "dp_replicate")
    if replicate is not None and replicate.size() > 1:
        return submesh(mesh, HSDP_VIEW)
    return shard


@dataclass
class FSDP2Strategy:
    """Shard every decoder block with ``fully_shard``, then the root module.

    * ``mp_param_dtype``: dtype parameters are all-gathered and computed in (None: as stored);
      ``mp_reduce_dtype``: dtype gradients are reduced in.
    * ``reshard_after_forward``: free gathered block parameters after forward (re-gather in
      backward); the root keeps them (it is needed first in backward).
    * ``cpu_offload``: sharded parameters, gradients and optimizer step live on the CPU.
    * ``activation_checkpointing``: recompute each block's activations in backward.

    HSDP (replicate across ``dp_replicate``, shard within) comes from the mesh: it is used when
    the mesh's ``dp_replicate`` dimension is larger than 1. Frozen parameters (LoRA) may share
    a block with trainable ones.
    """

    name: ClassVar[str] = "fsdp2"
    mp_param_dtype: str | torch.dtype | None = None
    mp_reduce_dtype: str | torch.dtype | None = "float32"
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.mp_param_dtype = _dtype(self.mp_param_dtype, "mp_param_dtype")
        self.mp_reduce_dtype = _dtype(self.mp_reduce_dtype, "mp_reduce_dtype")
        self.reshard_after_forward = bool(self.reshard_after_forward)
        self.cpu_offload = bool(self.cpu_offload)
        self.activation_checkpointing = bool(self.activation_checkpointing)

    def mp_policy(self) -> MixedPrecisionPolicy:
        return MixedPrecisionPolicy(
            param_dtype=self.mp_param_dtype, reduce_dtype=self.mp_reduce_dtype
        )

    def offload_policy(self) -> OffloadPolicy:
        if not self.cpu_offload:
            return OffloadPolicy()
        return CPUOffloadPolicy(pin_memory=torch.cuda.is_available())

    def parallelize(
        self,
        model: nn.Module,
        mesh: DeviceMesh | None = None,
        ignored_params: Collection[nn.Parameter] | None = None,
    ) -> nn.Module:
        """Shard ``model`` in place over ``mesh`` (default: every process) and return it.

        ``ignored_params`` stay as they are: not sharded, not cast, their gradients not reduced.
        """
        mesh = mesh if mesh is not None else build_mesh()
        shard_mesh = fsdp_mesh(mesh)
        blocks = decoder_blocks(model)
        if self.activation_checkpointing:
            apply_activation_checkpointing(blocks)
        common = {
            "mesh": shard_mesh,
            "mp_policy": self.mp_policy(),
            "offload_policy": self.offload_policy(),
            "ignored_params": set(ignored_params) if ignored_params else None,
        }
        for block in _without_outside_ties(model, blocks):
            fully_shard(block, reshard_after_forward=self.reshard_after_forward, **common)
        # None: the root keeps its parameters gathered after forward (backward starts there)
        fully_shard(
            model, reshard_after_forward=None if self.reshard_after_forward else False, **common
        )
        return model


def _without_outside_ties(model: nn.Module, blocks: list[nn.Module]) -> list[nn.Module]:
    """The blocks that share no parameter with a module outside themselves.

    FSDP2 manages each parameter in one group: a block whose weight is tied to a module
    elsewhere (a BERT-style word embedding tied to the output head, Zamba's block shared by
    several layers) is left to the root's group instead of its own.
    """
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    prefixes = {id(module): f"{name}." for name, module in model.named_modules()}
    kept = []
    for block in blocks:
        prefix = prefixes[id(block)]
        tied = any(not all(n.startswith(prefix) for n in names[id(p)]) for p in block.parameters())
        if tied:
            log.info(
                "FSDP2: %s shares weights outside itself; the root group holds it", prefix[:-1]
            )
        else:
            kept.append(block)
    return kept
