"""DistributedDataParallel over the data-parallel (× context-parallel) group of the mesh."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.parallel import DistributedDataParallel

from ._mesh import MeshError, _sub, build_mesh, dp_group
from ._strategy import _place, apply_activation_checkpointing, decoder_blocks


@dataclass
class DDPStrategy:
    """Replicate the model on every data-parallel rank and average gradients (torch DDP).

    Gradients are averaged over the mesh's ``dp_cp`` group (``dp`` when cp is 1). DDP does not
    compose with tensor parallelism: use ``fsdp2`` with tp_size > 1. Frozen parameters are left
    out of the gradient reduction. ``bucket_cap_mb`` None keeps DDP's default (25 MiB).
    """

    name: ClassVar[str] = "ddp"
    find_unused_parameters: bool = False
    bucket_cap_mb: float | None = None
    gradient_as_bucket_view: bool = True
    activation_checkpointing: bool = False

    def parallelize(
        self,
        model: nn.Module,
        mesh: DeviceMesh | None = None,
        ignored_params: Collection[nn.Parameter] | None = None,
    ) -> nn.Module:
        """Wrap ``model`` (placed on this process's device) in DistributedDataParallel.

        ``ignored_params`` are left out of DDP: not broadcast, their gradients not reduced.
        """
        mesh = mesh if mesh is not None else build_mesh()
        tp = _sub(mesh, "tp")
        if tp is not None and tp.size() > 1:
            raise MeshError(
                f"DDP does not compose with tensor parallelism (tp_size {tp.size()}); "
                "use the 'fsdp2' strategy"
            )
        if any(p.is_meta for p in model.parameters()):
            raise ValueError(
                "DDP needs materialised parameters; the model has parameters on the meta device"
            )
        if self.activation_checkpointing:
            apply_activation_checkpointing(decoder_blocks(model))
        model = _place(model, mesh)
        if ignored_params:
            ignored = {id(p) for p in ignored_params}
            names = [n for n, p in model.named_parameters() if id(p) in ignored]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
        kwargs = {}
        if self.bucket_cap_mb is not None:
            kwargs["bucket_cap_mb"] = self.bucket_cap_mb
        device_ids = [torch.cuda.current_device()] if mesh.device_type == "cuda" else None
        return DistributedDataParallel(
            model,
            device_ids=device_ids,
            process_group=dp_group(mesh, include_cp=True),
            find_unused_parameters=self.find_unused_parameters,
            gradient_as_bucket_view=self.gradient_as_bucket_view,
            **kwargs,
        )
