"""Torch-native parallelism: process groups, the device mesh, FSDP2/HSDP, DDP, TP, CP and PP."""

from ._cp import make_cp_batch_and_ctx
from ._cp_allgather import AllGatherContextParallel, load_balanced_positions
from ._ddp import DDPStrategy
from ._env import DistEnv, destroy_distributed, init_distributed
from ._fsdp import FSDP2Strategy
from ._grad_sync import no_sync
from ._mesh import (
    MESH_DIMS,
    MeshConfig,
    MeshError,
    build_mesh,
    dp_group,
    dp_rank_and_size,
    resolve_sizes,
    submesh,
)
from ._pp import (
    DecoderStage,
    build_pipeline_schedule,
    split_decoder_into_stages,
    sum_tied_embedding_grads,
    tied_embedding_group,
)
from ._reduce import (
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    global_label_tokens,
    is_main_process,
    main_process_first,
)
from ._strategy import NoStrategy, Strategy, build_strategy
from ._tp import apply_tensor_parallel, hf_tp_plan, tp_plan_for

__all__ = [
    "MESH_DIMS",
    "AllGatherContextParallel",
    "DDPStrategy",
    "DecoderStage",
    "DistEnv",
    "FSDP2Strategy",
    "MeshConfig",
    "MeshError",
    "NoStrategy",
    "Strategy",
    "all_reduce_mean",
    "all_reduce_sum",
    "apply_tensor_parallel",
    "barrier",
    "build_mesh",
    "build_pipeline_schedule",
    "build_strategy",
    "destroy_distributed",
    "dp_group",
    "dp_rank_and_size",
    "global_label_tokens",
    "hf_tp_plan",
    "init_distributed",
    "is_main_process",
    "load_balanced_positions",
    "main_process_first",
    "make_cp_batch_and_ctx",
    "no_sync",
    "resolve_sizes",
    "split_decoder_into_stages",
    "submesh",
    "sum_tied_embedding_grads",
    "tied_embedding_group",
    "tp_plan_for",
]
