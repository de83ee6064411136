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
  * `qwen3_moe`, `qwen3_next` (Qwen3-Next), `qwen3_5_moe` (Qwen3.5 MoE), `qwen3_vl_moe_text`
    (Qwen3-VL-MoE's language model; their router renormalises the top-k weights only where
    the config says `norm_topk_prob: true`, transformers' and ours always), `laguna` (Laguna),
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

`moe.lora_rank_scaling` is their `moe_rank_scaling` (their _peft/lora.py): LoRA on a layer's
routed experts takes rank `dim // n_activated_experts` (floor, a warning where it does not
divide, an error below 1) with the same alpha, so its scaling is alpha over that rank; linear
layers, the shared experts among them, keep `dim`. Here that is a `rank_pattern` entry for the
swapped experts' stacked weights, which the saved adapter_config.json carries for peft.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

from torch import nn

from automodel.core.config import ConfigNode
from automodel.moe import GroupedExperts, MoE
from automodel.peft import LoraConfig, pattern_key

from ._errors import config_problem
from ._sections import Moe

NEMO_BALANCING = "nemo_automodel"
RANK_SCALING = "moe.lora_rank_scaling"
log = logging.getLogger("automodel.recipes")


# model_type -> the default of router_aux_loss_coef where their class reads the config's
_AUX_LOSS = {
    "qwen3_moe": 0.0,
    "qwen3_next": 0.0,
    "qwen3_5_moe": 0.001,
    "qwen3_5_moe_text": 0.001,
    "qwen3_vl_moe_text": 0.0,
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


def scaled_expert_ranks(model: nn.Module, lora: LoraConfig, cfg: ConfigNode) -> LoraConfig:
    """`lora` with the swapped experts' stacked weights at rank `lora.dim // experts_per_token`
    (`moe.lora_rank_scaling`, see above), as `rank_pattern` entries; or a config problem."""
    modules = dict(model.named_modules())
    experts = {p: m for p, m in modules.items() if isinstance(m, GroupedExperts)}
    if not (lora.target_parameters and experts):
        message = (
            "it scales the rank of LoRA on the swapped MoE experts' stacked weights, and "
            + ("the model has no such experts" if lora.target_parameters else "peft adapts none")
            + ": set peft.target_parameters (e.g. ['*.experts.gate_up_proj', "
            "'*.experts.down_proj']) on a model with a moe: section, or drop this option"
        )
        raise config_problem(cfg, RANK_SCALING, message)
    weights = [f"{p}.{n}" for p, m in experts.items() for n in m._parameters]
    clash = next((w for w in weights if pattern_key(lora.rank_pattern, w) is not None), None)
    if clash is not None:
        key = pattern_key(lora.rank_pattern, clash)
        message = f"peft.rank_pattern key {key!r} sets the rank of {clash} too: set it in one place"
        raise config_problem(cfg, RANK_SCALING, message)
    names = {*modules, *(n for n, _ in model.named_parameters())}
    pattern: dict[str, int] = {}
    for top_k in sorted({m.config.experts_per_token for m in experts.values()}):
        rank = lora.dim // top_k
        if rank < 1:
            message = (
                f"peft.dim {lora.dim} // {top_k} experts per token is 0, and the experts' LoRA "
                f"needs a rank of at least 1: set peft.dim to at least {top_k}"
            )
            raise config_problem(cfg, RANK_SCALING, message)
        if lora.dim % top_k:
            log.warning(
                "%s: peft.dim %d is no multiple of %d experts per token; the experts' LoRA "
                "takes rank %d", RANK_SCALING, lora.dim, top_k, rank,
            )  # fmt: skip
        owners = {p for p, m in experts.items() if m.config.experts_per_token == top_k}
        pattern[_weights_key(owners, names)] = rank
    return replace(lora, rank_pattern={**pattern, **lora.rank_pattern})


def _weights_key(owners: set[str], names: set[str]) -> str:
    """A peft pattern key naming exactly the direct children of the modules `owners` among
    `names` (every module and parameter path): their shared last names where that is exact
    (`experts\\.[^.]+`), else each path."""
    wanted = {n for n in names if n.rpartition(".")[0] in owners}
    ends = [o.split(".") for o in owners]
    for size in range(1, min(len(e) for e in ends) + 1):
        if len({tuple(e[-size:]) for e in ends}) > 1:
            break
        key = r"\.".join(re.escape(part) for part in ends[0][-size:]) + r"\.[^.]+"
        if {n for n in names if pattern_key({key: 0}, n) is not None} == wanted:
            return key
    return "(?:" + "|".join(re.escape(o) for o in sorted(owners)) + r")\.[^.]+"
