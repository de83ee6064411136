"""Torch-native parallelism: process groups, the device mesh, FSDP2/HSDP, DDP, TP, CP and PP.

Each name is imported from its module on first use (PEP 562): FSDP, pipelining and DTensor
machinery cost seconds to import, and a run loads only the parts it uses.
"""

from __future__ import annotations

import importlib
from typing import Any

_PARTS = {
    "make_cp_batch_and_ctx": "_cp",
    "AllGatherContextParallel": "_cp_allgather",
    "HF_ATTENTION_NAME": "_cp_allgather",
    "load_balanced_positions": "_cp_allgather",
    "pad_row_ends": "_cp_allgather",
    "layer_types_outside_attention": "_hf_config",
    "token_mixers_outside_attention": "_hf_config",
    "DDPStrategy": "_ddp",
    "DistEnv": "_env",
    "destroy_distributed": "_env",
    "init_distributed": "_env",
    "FSDP2Strategy": "_fsdp",
    "no_sync": "_grad_sync",
    "MESH_DIMS": "_mesh",
    "MeshConfig": "_mesh",
    "MeshError": "_mesh",
    "build_mesh": "_mesh",
    "dp_group": "_mesh",
    "dp_rank_and_size": "_mesh",
    "resolve_sizes": "_mesh",
    "submesh": "_mesh",
    "DecoderStage": "_pp_stage",
    "RankStages": "_pp_stage",
    "is_multi_stage": "_pp",
    "pipeline_stage_count": "_pp",
    "build_pipeline_schedule": "_pp",
    "PipelineSeqLen": "_pp_seq_len",
    "split_decoder_into_stages": "_pp",
    "sum_tied_embedding_grads": "_pp",
    "tied_embedding_group": "_pp",
    "all_reduce_max": "_reduce",
    "all_reduce_mean": "_reduce",
    "all_reduce_sum": "_reduce",
    "barrier": "_reduce",
    "global_label_tokens": "_reduce",
    "is_main_process": "_reduce",
    "main_process_first": "_reduce",
    "NoStrategy": "_strategy",
    "Strategy": "_strategy",
    "build_strategy": "_strategy",
    "apply_tensor_parallel": "_tp",
    "hf_tp_plan": "_tp",
    "tp_plan_for": "_tp",
}

__all__ = sorted(_PARTS)


def __getattr__(name: str) -> Any:
    """Import `name` from its module on first use."""
    if name not in _PARTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PARTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PARTS])
