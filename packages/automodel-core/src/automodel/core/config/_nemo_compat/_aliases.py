"""Their `_target_` paths and ours: the alias table and what it answers.

`TARGET_ALIASES` is the one table of their targets and ours (docs/migrating.md prints it);
`NOT_SUPPORTED` names their targets we know and do not have; `RECIPES` maps their recipe
classes to our recipe names. `looks_like_nemo` tells their configs apart from ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError, Problem, did_you_mean
from ._keys import MINING_KEYS

NEMO_PREFIX = "nemo_automodel."
TARGET_KEY = "_target_"


@dataclass(frozen=True)
class Alias:
    """How one of their targets is spelled here.

    `ours`: our target (None: the section is plain keys here, its `_target_` is dropped).
    `args`: their argument name -> ours. `dropped`: their arguments we ignore, each with why it
    cannot change results. `refused`: their arguments (with the values we accept anyway, e.g.
    the default) we cannot honour, each with what to use instead. `defaults`: their defaults
    that differ from ours, written out so the meaning stays theirs. `moved`: their arguments
    that are keys of another section here (their name -> where it goes), moved by the
    retrieval pass (`_translate_retrieval`) with their values converted.
    """

    ours: str | None
    args: Mapping[str, str] = field(default_factory=dict)
    dropped: Mapping[str, str] = field(default_factory=dict)
    refused: Mapping[str, tuple[tuple[Any, ...], str]] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    section: Mapping[str, Any] = field(default_factory=dict)  # keys the section gains
    note: str = ""  # a difference to say whenever it is used
    limit: str | None = None  # their argument that keeps the first N samples: a `split` slice
    hf_padding: bool = False  # their tokenizer-style `padding` / `truncation` arguments
    json_unshuffled: bool = False  # their `shuffle_seed` leaves local JSON(L) files in order
    moved: Mapping[str, str] = field(default_factory=dict)
    token_windows: bool = False  # their seq_length counts inputs (windows of seq_length + 1)


_MODEL_DROPPED = {
    "use_liger_kernel": "a fused-kernel choice for the same computation",
    "use_sdpa_patching": "an attention-kernel choice for the same computation",
    "backend": "their model-implementation kernel backend (attention/linear kernels)",
    "force_hf": "the Hugging Face implementation is the one used here",
}
_LOSS_DROPPED = {
    "fp32_upcast": "the loss is always summed in float32 here (false there rounds in the "
    "logits' dtype)"
}
_CAUSAL_LM = "automodel.core.models.AutoModelForCausalLM"
_LOADER = "torchdata.stateful_dataloader.StatefulDataLoader"
_COLLATER = "nemo_automodel.components.datasets.utils.default_collater"
_NO_ASSISTANT = "a trace without an assistant turn has nothing to learn from: left out here"
_MOCK_DATA = "nemo_automodel.components.datasets.llm.mock_iterable_dataset.MockIterableDataset"
_THD_COLLATER = "nemo_automodel.components.datasets.utils.packed_sequence_thd_collater"
_VLM_COLLATER = "nemo_automodel.components.datasets.vlm.collate_fns.default_collate_fn"
_VLM_DATA = "nemo_automodel.components.datasets.vlm.datasets"
_VLM = "automodel.core.models.AutoModelForImageTextToText"
# their SQuAD, HellaSwag and column-mapped rows: their prompts, tokens and loss masks
_THEIR_TOKENS = {"prompt_format": "nemo_automodel"}
_THEIR_MODELS = "nemo_automodel.components.models"
# retrieval (finetune.bi_encoder, finetune.cross_encoder): their model classes, collators and
# dataset configs; `_translate_retrieval` moves what they carry into our sections
BI_ENCODERS = (
    "nemo_automodel.NeMoAutoModelBiEncoder.from_pretrained",
    "nemo_automodel._transformers.NeMoAutoModelBiEncoder.from_pretrained",
    "nemo_automodel._transformers.auto_model.NeMoAutoModelBiEncoder.from_pretrained",
)
CROSS_ENCODERS = (
    "nemo_automodel.NeMoAutoModelCrossEncoder.from_pretrained",
    "nemo_automodel._transformers.NeMoAutoModelCrossEncoder.from_pretrained",
    "nemo_automodel._transformers.auto_model.NeMoAutoModelCrossEncoder.from_pretrained",
)
BI_COLLATORS = (
    "nemo_automodel.components.datasets.llm.BiEncoderCollator",
    "nemo_automodel.components.datasets.llm.retrieval_collator.BiEncoderCollator",
)
CROSS_COLLATORS = (
    "nemo_automodel.components.datasets.llm.CrossEncoderCollator",
    "nemo_automodel.components.datasets.llm.retrieval_collator.CrossEncoderCollator",
)
RETRIEVAL_DATASETS = (  # RetrievalDatasetConfig / make_retrieval_dataset: .jsonl is inline rows
    "nemo_automodel.components.datasets.llm.retrieval_dataset.RetrievalDatasetConfig",
    "nemo_automodel.components.datasets.llm.retrieval_dataset.make_retrieval_dataset",
    "nemo_automodel.components.datasets.llm.make_retrieval_dataset",
)
INLINE_DATASETS = (  # their inline-only loader: every file is inline rows
    "nemo_automodel.components.datasets.llm.retrieval_dataset_inline.InlineRetrievalDatasetConfig",
    "nemo_automodel.components.datasets.llm.retrieval_dataset_inline.make_retrieval_dataset",
)
_EMBEDDER_MOVED = {
    "pooling": "bi_encoder.pooling (avg -> mean)",
    "l2_normalize": "bi_encoder.normalize",
    "do_distributed_inbatch_negative": "bi_encoder.in_batch_negatives, gather_across_ranks",
    "detach_distributed_inbatch_negatives": "only false (gradients flow through every rank)",
    "extract_submodel": "not supported",
}
_RERANKER_MOVED = {
    "pooling": "their bidirectional Llama's score head only",
    "temperature": "their bidirectional Llama's score head only",
}
_RETRIEVAL_MODEL_DROPPED = {
    **_MODEL_DROPPED,
    "sdpa_method": "an attention-kernel choice for the same computation",
}
_DATASET_MOVED = {
    "n_passages": "num_negatives (n_passages - 1)",
    "data_type": "train only (eval: validation_dataset is retrieval_eval_set here)",
    "model_type": "the recipe (bi_encoder or cross_encoder)",
    "max_train_samples": "a split slice",
    "train_data_select_offset": "a split slice",
    "do_shuffle": "shuffle_seed (the run's seed)",
    "use_dataset_instruction": "instructions (with their collator's use_dataset_instruction)",
}
_DATASET_REFUSED = {
    "cycle_positive_docs": ((False,), "each row's first positive is trained on; write one "
                            "row per positive instead"),
    "use_text_in_document": ((False,), "retrieval here is text only"),
}  # fmt: skip
_DATASET_DROPPED = {"eval_negative_size": "used by data_type: eval only"}
_COLLATOR_DROPPED = {
    "padding": "how far batches are padded; padding is masked out",
    "pad_to_multiple_of": "how far batches are padded; padding is masked out",
}
_BI_COLLATOR_MOVED = {
    "q_max_len": "bi_encoder.query_max_length",
    "p_max_len": "bi_encoder.passage_max_length",
    "query_prefix": "bi_encoder.query_prefix (+ the space their collator adds)",
    "passage_prefix": "bi_encoder.passage_prefix (+ the space their collator adds)",
    "use_dataset_instruction": "dataset.instructions (with the dataset's own)",
}
_CROSS_COLLATOR_MOVED = {
    "rerank_max_length": "cross_encoder.max_length",
    "prompt_template": "only their default (see docs/migrating.md)",
}

# Their target -> ours. The one table (printed in docs/migrating.md).
TARGET_ALIASES: dict[str, Alias] = {
    "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained": Alias(
        f"{_CAUSAL_LM}.from_pretrained", dropped=_MODEL_DROPPED
    ),
    "nemo_automodel.NeMoAutoModelForCausalLM.from_config": Alias(
        f"{_CAUSAL_LM}.from_config", dropped=_MODEL_DROPPED
    ),
    "nemo_automodel.components._transformers.auto_model.NeMoAutoModelForCausalLM.from_pretrained": Alias(
        f"{_CAUSAL_LM}.from_pretrained", dropped=_MODEL_DROPPED
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
    "nemo_automodel.components.datasets.llm.megatron_dataset.MegatronPretraining": Alias(
        "automodel.core.data.indexed_dataset",
        args={
            "splits_to_build": "part",
            "index_mapping_dir": "index_cache_dir",
            "num_train_samples": "num_samples",
            "num_val_samples": "num_samples",
            "num_test_samples": "num_samples",
        },
        dropped={
            "tokenizer": "the recipe's tokenizer checks the corpus",
            "num_dataset_builder_threads": "how fast the sample index is built",
            "mmap_bin_files": "how the token file is read",
            "micro_batch_size": "batches are step_scheduler's",
            "global_batch_size": "batches are step_scheduler's",
        },
        refused={
            "create_attention_mask": ((False,), "causal attention needs no mask here; drop it"),
            "object_storage_config": ((None,), "read the files from a local or mounted path"),
        },
        defaults={"split": "900,50,50", "seed": 1234},
        note=(
            "the same seq_length-token training windows over the same documents of each split "
            "part; the order of documents and windows is this library's own seeded shuffle, "
            "not Megatron's sample index"
        ),
        token_windows=True,
    ),
    "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy": Alias(
        "automodel.core.losses.MaskedCrossEntropy", dropped=_LOSS_DROPPED
    ),
    "nemo_automodel.components.loss.linear_ce.FusedLinearCrossEntropy": Alias(
        "automodel.core.losses.FusedLinearCrossEntropy", dropped=_LOSS_DROPPED
    ),
    "nemo_automodel.components.loss.chunked_ce.ChunkedCrossEntropy": Alias(
        "automodel.core.losses.ChunkedCrossEntropy", dropped=_LOSS_DROPPED
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
    _MOCK_DATA: Alias(None),  # benchmark.llm makes its own synthetic rows (see benchmark())
    _COLLATER: Alias(None),  # our dataloader pads (with the tokenizer's pad id) by default
    _THD_COLLATER: Alias(None),  # packed rows (packed_sequence_size > 0) collate on their own
    # finetune.vlm
    "nemo_automodel.NeMoAutoModelForImageTextToText.from_pretrained": Alias(
        f"{_VLM}.from_pretrained", dropped=_MODEL_DROPPED
    ),
    "nemo_automodel.NeMoAutoModelForImageTextToText.from_config": Alias(
        f"{_VLM}.from_config", dropped=_MODEL_DROPPED
    ),
    "nemo_automodel.components.datasets.vlm.datasets.make_medpix_dataset": Alias(
        "automodel.core.data.image_qa_dataset",
        args={"path_or_dataset": "path"},
        defaults={"path": "medpix-dataset/medpix-dataset", "image_column": "image_id"},
    ),
    # their random-noise images for timing steps: ours are noise of the same size too, and
    # answers of the same number of words (not the same words or pixels)
    "nemo_automodel.components.datasets.vlm.mock.build_mock_vlm_dataset": Alias(
        "automodel.core.data.synthetic_image_chat_dataset",
        args={"max_length": "response_words"},
        dropped={
            "pretokenize": "samples are tokenized when batched here",
            "truncate": "samples are tokenized when batched here (their length follows the words)",
        },
        defaults={"response_words": 256},
        note="the images are random noise and the answers filler words as theirs, not the same ones",
    ),
    f"{_VLM_DATA}.make_rdr_dataset": Alias(
        "automodel.core.data.image_qa_dataset",
        args={"path_or_dataset": "path"},
        defaults={
            "path": "quintend/rdr-items",
            "answer_column": "text",
            "question": "Describe this image.",
        },
    ),
    f"{_VLM_DATA}.make_cord_v2_dataset": Alias(
        "automodel.core.data.image_qa_dataset",
        args={"path_or_dataset": "path"},
        defaults={
            "path": "naver-clova-ix/cord-v2",
            "answer_column": "ground_truth",
            "answer_format": "donut",
            "question": "Describe this image.",
        },
        limit="limit_dataset_samples",
        note=(
            "a row with several parses (gt_parses) trains on its first here; theirs picks one "
            "at random each time (CORD-v2's rows have one)"
        ),
    ),
    f"{_VLM_DATA}.make_shopify_product_catalogue_dataset": Alias(
        "automodel.core.data.image_qa_dataset",
        args={"path_or_dataset": "path"},
        defaults={
            "path": "Shopify/product-catalogue",
            "image_column": "product_image",
            "answer_column": "ground_truth_category",
            "question": "What product category does this item belong to?",
        },
        limit="limit_dataset_samples",
    ),
    "nemo_automodel.components.datasets.vlm.collate_fns.qwen2_5_collate_fn": Alias(None),
    # their default collate with Gemma 4's thinking prefix: `collate.assistant_prefix` here
    "nemo_automodel.components.datasets.vlm.collate_fns.gemma4_prefix_collate_fn": Alias(
        None,
        dropped={"max_length": "samples are not truncated here (longer ones would be cut)"},
    ),
    _VLM_COLLATER: Alias(
        None,  # finetune.vlm's VisionChatCollator: the processor's template, labels on answers
        dropped={"max_length": "samples are not truncated here (longer ones would be cut)"},
    ),
    # finetune.bi_encoder / finetune.cross_encoder (what they carry: see _translate_retrieval)
    **{
        path: Alias(
            "automodel.core.models.AutoModel.from_pretrained",
            dropped=_RETRIEVAL_MODEL_DROPPED,
            moved=_EMBEDDER_MOVED,
        )
        for path in BI_ENCODERS
    },
    **{
        path: Alias(
            "automodel.core.models.AutoModelForSequenceClassification.from_pretrained",
            dropped=_RETRIEVAL_MODEL_DROPPED,
            moved=_RERANKER_MOVED,
        )
        for path in CROSS_ENCODERS
    },
    **{
        path: Alias(None, dropped=_COLLATOR_DROPPED, moved=_BI_COLLATOR_MOVED)
        for path in BI_COLLATORS
    },
    **{
        path: Alias(
            None,
            dropped={**_COLLATOR_DROPPED, "return_tensors": "tensors are what batches hold"},
            moved=_CROSS_COLLATOR_MOVED,
        )
        for path in CROSS_COLLATORS
    },
    **{
        path: Alias(
            "automodel.core.data.retrieval_dataset",
            args={"data_dir_list": "path"},
            dropped=_DATASET_DROPPED,
            refused=_DATASET_REFUSED,
            moved=_DATASET_MOVED,
        )
        for path in (*RETRIEVAL_DATASETS, *INLINE_DATASETS)
    },
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
