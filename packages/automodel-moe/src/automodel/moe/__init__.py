"""automodel.moe: fast Mixture-of-Experts layers and load balancing for Hugging Face MoE models.

Swap the MoE blocks of a transformers model for grouped-matmul ones with ``patch_hf_moe``;
the weights keep their HF names, so checkpoints load in plain transformers unchanged.
"""

from automodel.moe._block import MoE
from automodel.moe._config import MoEConfig
from automodel.moe._deepep import DeepEPDispatcher
from automodel.moe._ep_dispatch import AllToAllDispatcher
from automodel.moe._expert_parallel import DISPATCHERS, shard_experts
from automodel.moe._experts import GroupedExperts
from automodel.moe._hf import patch_hf_moe, unpatch_hf_moe
from automodel.moe._metrics import (
    attach_aux_loss,
    expert_load,
    moe_aux_loss,
    moe_metrics,
    routing_mask,
    set_routing_mask,
    uncounted,
    update_moe_bias,
)
from automodel.moe._router import TopKRouter

__all__ = [
    "DISPATCHERS",
    "AllToAllDispatcher",
    "DeepEPDispatcher",
    "GroupedExperts",
    "MoE",
    "MoEConfig",
    "TopKRouter",
    "attach_aux_loss",
    "expert_load",
    "moe_aux_loss",
    "moe_metrics",
    "patch_hf_moe",
    "routing_mask",
    "set_routing_mask",
    "shard_experts",
    "uncounted",
    "unpatch_hf_moe",
    "update_moe_bias",
]
