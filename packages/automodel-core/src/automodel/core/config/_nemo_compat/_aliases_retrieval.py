"""The retrieval recipes' part of the alias table (finetune.bi_encoder, finetune.cross_encoder):
their model classes, collators and dataset configs; `_translate_retrieval` moves what they
carry into our sections."""

from __future__ import annotations

from ._alias import MODEL_DROPPED, Alias

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
    "extract_submodel": "model.submodel (the part of the loaded model to train)",
}
_RERANKER_MOVED = {
    "pooling": "their bidirectional Llama's score head only",
    "temperature": "their bidirectional Llama's score head only",
}
_RETRIEVALMODEL_DROPPED = {
    **MODEL_DROPPED,
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


RETRIEVAL_ALIASES: dict[str, Alias] = {
    **{
        path: Alias(
            "automodel.core.models.AutoModel.from_pretrained",
            dropped=_RETRIEVALMODEL_DROPPED,
            moved=_EMBEDDER_MOVED,
        )
        for path in BI_ENCODERS
    },
    **{
        path: Alias(
            "automodel.core.models.AutoModelForSequenceClassification.from_pretrained",
            dropped=_RETRIEVALMODEL_DROPPED,
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
