"""`moe.balancing: nemo_automodel`: the load balancing NeMo AutoModel's own model class gives the
model's family, chosen from the loaded model's config (a NeMo AutoModel config translated to ours
says this, since their YAML leaves the balancing to the model class).

Their classes, by the HF config's `model_type`:
  * `deepseek_v3` (DeepSeek-V3, Moonlight, ...), `deepseek_v32` (DeepSeek-V3.2), `deepseek_v4`
    (DeepSeek-V4), `glm4_moe` (GLM-4.5 / 4.7), `glm4_moe_lite` (GLM-4.7-Flash), `glm_moe_dsa`
    (GLM-5), `minimax_m2` (MiniMax-M2), `minimax_m3_vl_text` (MiniMax-M3), `mistral4` (Mistral
    Small 4): auxiliary-loss-free balancing, the routing bias moved by
    1e-3 x sign(mean load - load) after each optimizer step (their gate_bias_update_factor);
    no aux loss. DeepSeek-V4's hash-routed layers are not balanced (their hash gate has no
    bias), nor are ours. Mistral 4's Hugging Face router has no bias: the one learned here is
    saved under a key plain transformers does not read.
  * `qwen3_moe`, `qwen3_next` (Qwen3-Next), `qwen3_5_moe` (Qwen3.5 MoE), `laguna` (Laguna),
    `gpt_oss` (gpt-oss), `ernie4_5_moe` (ERNIE-4.5 MoE): an aux loss weighted by the config's
    `router_aux_loss_coef` (none when it is 0; Qwen3.5 and gpt-oss take 0.001 when the config
    has none); no bias update (ERNIE's checkpoint bias still steers the choice). gpt-oss's
    weights are a softmax over its top k logits, its aux loss's probabilities the softmax over
    every expert, in theirs as in ours and transformers'. Their loss divides the token fractions by
    the top-k (they sum to 1); ours does not (they sum to k, as in transformers), so the same
    loss here has the weight router_aux_loss_coef / num_experts_per_tok. Laguna's sigmoid scores
    enter theirs divided by their sum (with their default norm_topk_prob, which transformers'
    Laguna router always applies), as ours do.
  * `nemotron_h` (Nemotron 3), `kimi_linear` (Kimi-Linear), `mimo_v2_flash` (MiMo-V2-Flash),
    `hy_v3` (Hy3): no balancing (gate_bias_update_factor and aux_loss_coeff 0); the
    checkpoint's routing bias is used, never moved.
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


# model_type -> the default of router_aux_loss_coef where their class reads the config's
_AUX_LOSS = {
    "qwen3_moe": 0.0,
    "qwen3_next": 0.0,
    "qwen3_5_moe": 0.001,
    "qwen3_5_moe_text": 0.001,
    "laguna": 0.0,
    "gpt_oss": 0.001,
    "ernie4_5_moe": 0.0,
}
_BIAS = (
    *("deepseek_v3", "deepseek_v32", "deepseek_v4", "glm4_moe", "glm4_moe_lite", "glm_moe_dsa"),
    *("minimax_m2", "minimax_m3_vl_text", "mistral4"),
)
_NO_BALANCING = ("nemotron_h", "kimi_linear", "mimo_v2_flash", "hy_v3")
MAPPED = (*_BIAS, *_AUX_LOSS, *_NO_BALANCING)


def nemo_balancing(hf_config: Any) -> dict[str, Any] | None:
    """`balancing`, `aux_loss_coeff`, `bias_update_rate` their class uses for a model of this
    (text) config; None for a family not mapped here."""
    kind = getattr(hf_config, "model_type", None)
    if kind in _BIAS:
        return {"balancing": "bias", "bias_update_rate": 1e-3}
    if kind in _NO_BALANCING:
        return {"balancing": "none"}
    if kind not in _AUX_LOSS:
        return None
    coeff = getattr(hf_config, "router_aux_loss_coef", _AUX_LOSS[kind])
    coeff = float(coeff or 0.0)
    if coeff <= 0:
        return {"balancing": "none"}
    top_k = int(hf_config.num_experts_per_tok)
    return {"balancing": "aux_loss", "aux_loss_coeff": coeff / top_k}


def resolve_nemo_balancing(model: nn.Module, cfg: ConfigNode) -> dict[str, Any]:
    """The balancing options of `nemo_balancing` for `model`, or a config problem."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    options = nemo_balancing(text)
    if options is None:
        kind = getattr(text, "model_type", type(model).__name__)
        message = (
            f"{NEMO_BALANCING}: NeMo AutoModel's balancing for {kind} models is not mapped here "
            f"(the mapped model types: {', '.join(MAPPED)}); set moe.balancing to aux_loss (with "
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
