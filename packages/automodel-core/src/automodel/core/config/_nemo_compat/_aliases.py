"""Their `_target_` paths and ours: the alias table and what it answers.

`TARGET_ALIASES` is the one table of their targets and ours (docs/migrating.md prints it): the
LLM entries here, the pre-training data and GPT-2 in `_aliases_pretrain`, finetune.vlm's in
`_aliases_vlm`, the retrieval recipes' in `_aliases_retrieval`. `NOT_SUPPORTED` names their
targets we know and do not have; `RECIPES` maps their recipe classes to our recipe names. `looks_like_nemo` tells their configs apart from ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import ConfigError, Problem, did_you_mean
from ._alias import MODEL_DROPPED, NEMO_PREFIX, TARGET_KEY, Alias
from ._aliases_pretrain import PRETRAIN_ALIASES
from ._aliases_retrieval import (
    BI_COLLATORS,
    BI_ENCODERS,
    CROSS_COLLATORS,
    CROSS_ENCODERS,
    INLINE_DATASETS,
    RETRIEVAL_ALIASES,
    RETRIEVAL_DATASETS,
)
from ._aliases_vlm import VLM_ALIASES
from ._keys import MINING_KEYS

__all__ = [
    "BI_COLLATORS",
    "BI_ENCODERS",
    "CROSS_COLLATORS",
    "CROSS_ENCODERS",
    "INLINE_DATASETS",
    "NEMO_PREFIX",
    "NOT_SUPPORTED",
    "RECIPES",
    "RETRIEVAL_DATASETS",
    "TARGET_ALIASES",
    "TARGET_KEY",
    "Alias",
    "alias_for",
    "looks_like_nemo",
    "their_arguments",
]

_LOSS_DROPPED = {
    "fp32_upcast": "the loss is always summed in float32 here (false there rounds in the "
    "logits' dtype)"
}
_CAUSAL_LM = "automodel.core.models.AutoModelForCausalLM"
_LOADER = "torchdata.stateful_dataloader.StatefulDataLoader"
_COLLATER = "nemo_automodel.components.datasets.utils.default_collater"
_NO_ASSISTANT = "a trace without an assistant turn has nothing to learn from: left out here"
_THD_COLLATER = "nemo_automodel.components.datasets.utils.packed_sequence_thd_collater"
# their SQuAD, HellaSwag and column-mapped rows: their prompts, tokens and loss masks
_THEIR_TOKENS = {"prompt_format": "nemo_automodel"}
_THEIR_MODELS = "nemo_automodel.components.models"
# Their target -> ours. The one table (printed in docs/migrating.md).
TARGET_ALIASES: dict[str, Alias] = {
    "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained": Alias(
        f"{_CAUSAL_LM}.from_pretrained", dropped=MODEL_DROPPED
    ),
    "nemo_automodel.NeMoAutoModelForCausalLM.from_config": Alias(
        f"{_CAUSAL_LM}.from_config", dropped=MODEL_DROPPED
    ),
    "nemo_automodel.components._transformers.auto_model.NeMoAutoModelForCausalLM.from_pretrained": Alias(
        f"{_CAUSAL_LM}.from_pretrained", dropped=MODEL_DROPPED
    ),
    "nemo_automodel.NeMoAutoTokenizer.from_pretrained": Alias(
        "automodel.core.models.load_tokenizer",
        args={"pretrained_model_name_or_path": "path_or_name"},
    ),
    "nemo_automodel._transformers.auto_tokenizer.NeMoAutoTokenizer.from_pretrained": Alias(
        "automodel.core.models.load_tokenizer",
        args={"pretrained_model_name_or_path": "path_or_name"},
    ),
    "nemo_automodel.components.datasets.llm.squad.make_squad_dataset": Alias(
        "automodel.core.data.squad_dataset",
        args={"dataset_name": "path"},  # limit_dataset_samples: a slice of `split`
        refused={"fp8": ((False,), "fp8 padding of samples is not supported; drop it")},
        defaults={"path": "squad", **_THEIR_TOKENS},
        limit="limit_dataset_samples",
        hf_padding=True,
    ),
    "nemo_automodel.components.datasets.llm.hellaswag.HellaSwag": Alias(
        "automodel.core.data.hellaswag_dataset",
        args={"path_or_dataset": "path"},
        dropped={"pad_to_max_length": "padding is masked out of attention and loss"},
        defaults=_THEIR_TOKENS,
        limit="num_samples_limit",
    ),
    "nemo_automodel.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset": Alias(
        "automodel.core.data.instruction_dataset",
        args={
            "path_or_dataset_id": "path",
            "answer_only_loss_mask": "answer_only_loss",
            "use_hf_chat_template": "use_chat_template",
        },
        defaults=_THEIR_TOKENS,
        limit="limit_dataset_samples",
        hf_padding=True,
    ),
    # OpenAI messages (tools and tool calls too) or ShareGPT rows, with their turn spans
    "nemo_automodel.components.datasets.llm.chat_dataset.ChatDataset": Alias(
        "automodel.core.data.tool_call_dataset",
        args={"path_or_dataset_id": "path"},
        refused={
            "start_of_turn_token": ((None,), "the chat template marks the turns here"),
            "mask_reasoning_content": ((False,), "drop it"),
            "mask_history": ((False,), "drop it (earlier assistant turns are trained on)"),
            "unshifted": ((False,), "drop it"),
            "skip_invalid_samples": ((False,), "fix or filter the samples"),
        },
        defaults={"prompt_format": "nemo_automodel"},
        hf_padding=True,
        json_unshuffled=True,
    ),
    # function-calling traces and xLAM rows, with their tokens and labels (their turn spans)
    "nemo_automodel.components.datasets.llm.agent_chat.make_agent_chat_dataset": Alias(
        "automodel.core.data.tool_call_dataset",
        args={"dataset_name": "path"},
        dropped={"filter_no_assistant": _NO_ASSISTANT},
        refused={
            "mask_reasoning_content": ((False,), "reasoning is trained on here: drop it"),
            "train_on_last_turn_only": ((False,), "every assistant turn is trained on: drop it"),
        },
        defaults={"prompt_format": "nemo_automodel"},
        limit="limit_dataset_samples",
        hf_padding=True,
    ),
    "nemo_automodel.components.datasets.llm.xlam.make_xlam_dataset": Alias(
        "automodel.core.data.tool_call_dataset",
        args={"dataset_name": "path"},
        refused={"fp8": ((False,), "fp8 padding of samples is not supported; drop it")},
        defaults={
            "path": "Salesforce/xlam-function-calling-60k",
            "schema": "xlam",
            "prompt_format": "nemo_automodel",
        },
        limit="limit_dataset_samples",
        hf_padding=True,
    ),
    "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy": Alias(
        "automodel.core.losses.MaskedCrossEntropy", dropped=_LOSS_DROPPED
    ),
    "nemo_automodel.components.loss.linear_ce.FusedLinearCrossEntropy": Alias(
        "automodel.core.losses.FusedLinearCrossEntropy", dropped=_LOSS_DROPPED
    ),
    "nemo_automodel.components.loss.chunked_ce.ChunkedCrossEntropy": Alias(
        "automodel.core.losses.ChunkedCrossEntropy",
        dropped={
            **_LOSS_DROPPED,
            "compile": "whether their chunk loss runs torch.compile'd: the same computation",
        },
    ),
    "nemo_automodel.components._peft.lora.PeftConfig": Alias(
        "automodel.peft.LoraConfig",
        args={"include_modules": "target_modules"},
        dropped={
            "use_memory_efficient_lora": "a memory/speed choice for the same computation",
            "moe_rank_scaling": "a rank for LoRA on the MoE experts only (moe.lora_rank_scaling where a pattern adapts them)",
        },
        refused={
            "lora_A_init": (("xavier",), "set init_a: kaiming or gaussian"),
        },
        note=(
            "lora_A is initialised with kaiming here (NeMo AutoModel: xavier); lora_B starts at "
            "zero in both, so the starting model is the same, not the random A"
        ),
        # their defaults where ours differ (alpha 32, dropout after the adapter input)
        defaults={"alpha": 32, "dropout_position": "post"},
    ),
    # their `qat.qat_config:` (the `qat:` pass of `_translate_features` makes its keys ours)
    "nemo_automodel.components.quantization.qat.QATConfig": Alias(
        None,
        args={"quantizer_type": "scheme", "groupsize": "group_size"},
        dropped={
            "precision": "the weights keep their dtype (theirs are the model's, copied)",
            "inner_k_tiles": "the int4 weight packing of a later conversion, not the training",
        },
        refused={
            "padding_allowed": (
                (False,),
                "a layer whose input features are not a multiple of group_size stays "
                "unquantized here (no padding)",
            ),
            "scales_precision": (
                ("bfloat16", "bf16", "torch.bfloat16"),
                "the weight scales are bfloat16 here (their recipe's default)",
            ),
        },
    ),
    "nemo_automodel.components.training.rng.StatefulRNG": Alias(
        None,
        dropped={
            "ranked": (
                "automodel seeds every rank alike (identical initial weights); with one "
                "process, rank 0's seed is the same as theirs"
            )
        },
    ),
    "nemo_automodel.components.distributed.fsdp2.FSDP2Manager": Alias(
        None, section={"strategy": "fsdp2"}, dropped={"backend": "chosen from the device"}
    ),
    "nemo_automodel.components.distributed.ddp.DDPManager": Alias(
        None, section={"strategy": "ddp"}, dropped={"backend": "chosen from the device"}
    ),
    "nemo_automodel.components.loss.kd_loss.KDLoss": Alias(
        None,  # the kd: section (temperature), with the top-level kd_ratio
        dropped={"chunk_size": "a memory choice for the same sum"},
        refused={
            "ignore_index": ((-100,), "labels to skip are -100 here"),
            "fp32_upcast": ((True,), "the KL is computed in float32 here"),
        },
    ),
    "nemo_automodel.components.loss.te_parallel_ce.TEParallelCrossEntropy": Alias(
        "automodel.core.losses.MaskedCrossEntropy",
        refused={"reduction": (("sum",), "their default, the sum over label tokens")},
        note=(
            "Transformer Engine's parallel cross-entropy kernel is not shipped: torch's computes "
            "the same float32 sum over label tokens, divided by the step's label tokens"
        ),
    ),
    # their own config classes of families transformers now has: the checkpoint's config.json
    # read by transformers' class of the same model_type (their extra keyword arguments are
    # config attributes, set the same way)
    **{
        f"{_THEIR_MODELS}.{family}.config.{theirs}.from_pretrained": Alias(
            f"transformers.{ours}.from_pretrained"
        )
        for family, theirs, ours in (
            ("deepseek_v32", "DeepseekV32Config", "DeepseekV32Config"),
            ("deepseek_v4", "DeepseekV4Config", "DeepseekV4Config"),
            ("glm_moe_dsa", "GlmMoeDsaConfig", "GlmMoeDsaConfig"),
            ("hy_v3", "HYV3Config", "HYV3Config"),
            ("kimi_linear", "KimiLinear48BConfig", "KimiLinearConfig"),
            ("laguna", "LagunaConfig", "LagunaConfig"),
            ("mimo_v2_flash", "MiMoV2FlashConfig", "MiMoV2FlashConfig"),
        )
    },
    # their MoE parallelizer: FSDP2 (and expert parallelism) over their MoE model classes;
    # here distributed: and moe: lay the model out (`_translate_sections` drops the section)
    "nemo_automodel.components.moe.parallelizer.parallelize_model": Alias(None),
    # their newer spellings of the distributed: section and its pipeline: subsection
    "nemo_automodel.components.distributed.config.FSDP2Config": Alias(
        None, section={"strategy": "fsdp2"}
    ),
    "nemo_automodel.components.distributed.config.DDPConfig": Alias(
        None, section={"strategy": "ddp"}
    ),
    "nemo_automodel.components.distributed.pipelining.config.PipelineConfig": Alias(None),
    # the pipeline object itself as `autopipeline:` (the same keys as PipelineConfig)
    "nemo_automodel.components.distributed.pipelining.AutoPipeline": Alias(None),
    "nemo_automodel.components.distributed.pipelining.autopipeline.AutoPipeline": Alias(None),
    _COLLATER: Alias(None),  # our dataloader pads (with the tokenizer's pad id) by default
    _THD_COLLATER: Alias(None),  # packed rows (packed_sequence_size > 0) collate on their own
    **PRETRAIN_ALIASES,
    **VLM_ALIASES,
    **RETRIEVAL_ALIASES,
}

# Their targets we know and do not have, with what to use instead.
NOT_SUPPORTED: dict[str, str] = {
    "nemo_automodel.components.distributed.megatron_fsdp.MegatronFSDPManager": (
        "Megatron-FSDP is not supported; use distributed.strategy: fsdp2"
    ),
    "nemo_automodel.components.distributed.nvfsdp.NVFSDPManager": (
        "nvFSDP is not supported; use distributed.strategy: fsdp2"
    ),
    **{
        f"{_THEIR_MODELS}.{family}.config.{cls}.from_pretrained": (
            f"transformers has no {cls.removesuffix('Config')} model class; their own "
            "implementation of this family is not available here"
        )
        for family, cls in (
            ("hy_mt2", "HyMT2Config"),
            ("kimi_k2", "KimiK2Config"),
            ("kimi_k3", "KimiK3Config"),
            ("ling_v2", "BailingMoeV2Config"),
        )
    },
}

# Their recipe classes -> our recipe names (`automodel finetune llm`, ...).
RECIPES = {
    "TrainFinetuneRecipeForNextTokenPrediction": "finetune.llm",
    "FinetuneRecipeForNextTokenPrediction": "finetune.llm",
    "KnowledgeDistillationRecipeForNextTokenPrediction": "kd.llm",
    "BenchmarkingRecipeForNextTokenPrediction": "benchmark.llm",
    "FinetuneRecipeForVLM": "finetune.vlm",  # runs once a finetune.vlm recipe is installed
    "TrainBiEncoderRecipe": "finetune.bi_encoder",
    "TrainCrossEncoderRecipe": "finetune.cross_encoder",
    "MineHardNegativesRecipe": "mine.hard_negatives",
}


def looks_like_nemo(data: Mapping[str, Any]) -> bool:
    """True for a config in NeMo AutoModel's spelling: a `recipe:` key, a nemo_automodel target,
    or their hard-negative mining keys (their mining config names no recipe)."""
    mining = data.get("mining")
    theirs = isinstance(mining, Mapping) and any(key in MINING_KEYS for key in mining)
    return "recipe" in data or theirs or _names_nemo(data)


def _names_nemo(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(
            (
                isinstance(v, str)
                and v.startswith(NEMO_PREFIX)
                and (k == TARGET_KEY or k.endswith("_fn"))
            )
            or _names_nemo(v)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return any(_names_nemo(v) for v in value)
    return False


def alias_for(path: str, *, key: str = "", where: str = "") -> str:
    """Our target for their `nemo_automodel.*` path; a ConfigError if there is none."""
    alias = TARGET_ALIASES.get(path)
    if alias is not None and alias.ours is not None:
        return alias.ours
    if alias is not None:
        message = f"'{path}' is a section here, not something to build (see docs/migrating.md)"
    elif path in NOT_SUPPORTED:
        message = f"'{path}' (NeMo AutoModel) has no equivalent here: {NOT_SUPPORTED[path]}"
    else:
        hint = did_you_mean(path, [p for p, a in TARGET_ALIASES.items() if a.ours])
        message = (
            f"'{path}' is a NeMo AutoModel target that is not in the alias table{hint}; "
            "docs/migrating.md lists the ones that map to automodel. Name an automodel (or "
            "torch/transformers) callable instead; no package named nemo_automodel is imported"
        )
    raise ConfigError(Problem(key, message, where))


def their_arguments(path: str) -> set[str]:
    """The argument names of their target `path` that ours spells otherwise (for overrides)."""
    alias = TARGET_ALIASES.get(path)
    if alias is None:
        return set()
    return {
        *alias.args,
        *alias.dropped,
        *alias.refused,
        *alias.moved,
        *([alias.limit] if alias.limit else []),
    }
