"""Their Mixture-of-Experts model families: how each is named on the Hub, how their own
implementation of it balances the experts, and whether automodel.moe swaps its blocks.

NeMo AutoModel runs MoE models through its own model classes (picked by the checkpoint's
architecture), whose routers balance the experts as each family's class says: DeepSeek-V3 and
its kin nudge a routing bias by 1e-3 after each step and add no aux loss; Qwen3-MoE and others add
an aux loss weighted by the HF config's `router_aux_loss_coef`; some do neither. Their YAML does
not spell this out, so the translation tells the family from the model's name (an id such as
`Qwen/Qwen3-30B-A3B`, or a path ending in one) before anything is loaded, and the recipe's
`moe.balancing: nemo_automodel` reads the same family from the loaded model's config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class MoeFamily:
    """One of their MoE model families.

    `balancing`: what their model class does (`aux_loss`, `bias`, or None for no balancing).
    `swapped`: automodel.moe swaps this family's Hugging Face MoE blocks (then `moe:` with
    `balancing: nemo_automodel` trains it as they do).
    """

    name: str
    pattern: str  # matched (re.search) against the lower-cased model name or path
    balancing: str | None
    swapped: bool = False


MOE_FAMILIES = (
    # families whose Hugging Face blocks automodel.moe swaps
    MoeFamily("Qwen3-MoE", r"qwen3-(coder-)?\d+b-a\d+b", "aux_loss", swapped=True),
    MoeFamily("DeepSeek-V3", r"moonlight-16b|deepseek-(v3(\.1)?(?![.\d])|r1(?!-distill))", "bias", swapped=True),
    MoeFamily("DeepSeek-V3.2", r"deepseek-v3(\.2|2)", "bias", swapped=True),
    MoeFamily("GLM-4.5/4.7 MoE", r"glm-4\.[5-7]", "bias", swapped=True),
    MoeFamily("GLM-5", r"glm-5", "bias", swapped=True),
    MoeFamily("MiniMax-M2", r"minimax-m2", "bias", swapped=True),
    MoeFamily("Qwen3-Next", r"qwen3-next", "aux_loss", swapped=True),
    MoeFamily("Laguna", r"laguna", "aux_loss", swapped=True),
    MoeFamily("Nemotron 3", r"nemotron-3(\.5)?-(?!.*omni)", None, swapped=True),
    MoeFamily("Hy3", r"(^|/)hy3", None, swapped=True),
    MoeFamily("Kimi-Linear", r"kimi-linear", None, swapped=True),
    MoeFamily("MiMo-V2-Flash", r"mimo-v2-flash", None, swapped=True),
    # mostly trained as VLMs: finetune.vlm gets the moe: section as finetune.llm does
    MoeFamily("Qwen3.5 MoE", r"qwen3\.[5-6]-\d+b-a\d+b", "aux_loss", swapped=True),
    MoeFamily("Qwen3-VL-MoE", r"qwen3-vl-\d+b-a\d+b", "aux_loss", swapped=True),
    MoeFamily("gpt-oss", r"gpt-oss", "aux_loss", swapped=True),
    MoeFamily("DeepSeek-V4", r"deepseek-v4", "bias", swapped=True),  # hash layers: no balancing
    MoeFamily("ERNIE-4.5 MoE", r"ernie-4\.5-\d+b-a\d+b", "aux_loss", swapped=True),
    # mostly trained as VLMs (finetune.vlm's moe: section, as for Qwen3.5 MoE)
    MoeFamily("Mistral Small 4", r"mistral-small-4", "bias", swapped=True),
    MoeFamily("MiniMax-M3", r"minimax-m3", "bias", swapped=True),
    # their own implementations of families automodel.moe does not swap
    MoeFamily("Ling 2.0", r"(^|/)(ling|ring)-(mini|flash|1t)", None),
    MoeFamily("Nemotron 3 Omni", r"nemotron-3(\.5)?-.*omni", None),
    MoeFamily("Hy-MT2", r"hy-mt2", None),
    MoeFamily("Kimi-K3", r"kimi-k3", None),
    MoeFamily("Gemma 4 MoE", r"gemma-4-\d+b-a\d+b", None),
)  # fmt: skip

# the families automodel.moe swaps (for messages)
SWAPPED = (
    "DeepSeek-V3, DeepSeek-V3.2, DeepSeek-V4, GLM-4.5/4.7, GLM-5, Kimi-Linear, MiMo-V2-Flash, "
    "Mistral Small 4, Nemotron 3, MiniMax-M2, MiniMax-M3, Hy3, Laguna, ERNIE-4.5 MoE, Qwen3-MoE, "
    "Qwen3-Next, Qwen3.5 MoE, Qwen3-VL-MoE, Qwen2-MoE, Mixtral, OLMoE and gpt-oss"
)


def moe_family(model_name: str) -> MoeFamily | None:
    """Their MoE family of the model named `model_name` (a Hub id or a path), if we know it."""
    name = model_name.lower()
    return next((f for f in MOE_FAMILIES if re.search(f.pattern, name)), None)
