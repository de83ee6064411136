"""`moe.balancing: nemo_automodel`: the load balancing NeMo AutoModel's own model class gives the
model's family, chosen from the loaded model's config (a NeMo AutoModel config translated to ours
says this, since their YAML leaves the balancing to the model class).

Their classes, by the HF config's `model_type`:
  * `deepseek_v3` (DeepSeek-V3, Moonlight, ...): auxiliary-loss-free balancing, the routing bias
    moved by 1e-3 x sign(mean load - load) after each optimizer step; no aux loss.
  * `qwen3_moe`: an aux loss weighted by the config's `router_aux_loss_coef` (none when it is 0);
    no bias. Their loss divides the token fractions by the top-k (they sum to 1); ours does not
    (they sum to k, as in transformers), so the same loss here has the weight
    router_aux_loss_coef / num_experts_per_tok.
Any other family is an error naming it: the balancing to use is then set explicitly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from automodel.core.config import ConfigNode
from automodel.moe import MoE

from ._errors import config_problem
from ._sections import Moe

NEMO_BALANCING = "nemo_automodel"


def nemo_balancing(hf_config: Any) -> dict[str, Any] | None:
    """`balancing`, `aux_loss_coeff`, `bias_update_rate` their class uses for a model of this
    (text) config; None for a family not mapped here."""
    kind = getattr(hf_config, "model_type", None)
    if kind == "deepseek_v3":
        return {"balancing": "bias", "bias_update_rate": 1e-3}
    if kind == "qwen3_moe":
        coeff = float(getattr(hf_config, "router_aux_loss_coef", 0.0) or 0.0)
        if coeff <= 0:
            return {"balancing": "none"}
        top_k = int(hf_config.num_experts_per_tok)
        return {"balancing": "aux_loss", "aux_loss_coeff": coeff / top_k}
    return None


def resolve_nemo_balancing(model: nn.Module, cfg: ConfigNode) -> dict[str, Any]:
    """The balancing options of `nemo_balancing` for `model`, or a config problem."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    options = nemo_balancing(text)
    if options is None:
        kind = getattr(text, "model_type", type(model).__name__)
        message = (
            f"{NEMO_BALANCING}: NeMo AutoModel's balancing for {kind} models is not mapped here "
            "(only deepseek_v3 and qwen3_moe are); set moe.balancing to aux_loss (with "
            "aux_loss_coeff), bias (with bias_update_rate) or none"
        )
        raise config_problem(cfg, "moe.balancing", message)
    return options


def applied_section(model: nn.Module, section: Moe | None) -> Moe | None:
    """`section` with the balancing the model's swapped MoE blocks were given (the same section
    unless it said `nemo_automodel`)."""
    if section is None or section.balancing != NEMO_BALANCING:
        return section
    block = next((m for m in model.modules() if isinstance(m, MoE)), None)
    if block is None:
        return section
    cfg = block.config
    return replace(
        section,
        balancing=cfg.balancing,
        aux_loss_coeff=cfg.aux_loss_coeff,
        bias_update_rate=cfg.bias_update_rate,
    )
