"""finetune.vlm's part of the alias table: their vision-language model loaders, datasets and
collate functions."""

from __future__ import annotations

from ._alias import MODEL_DROPPED, Alias

_VLM_COLLATER = "nemo_automodel.components.datasets.vlm.collate_fns.default_collate_fn"
_VLM_DATA = "nemo_automodel.components.datasets.vlm.datasets"
_VLM = "automodel.core.models.AutoModelForImageTextToText"

VLM_ALIASES: dict[str, Alias] = {
    "nemo_automodel.NeMoAutoModelForImageTextToText.from_pretrained": Alias(
        f"{_VLM}.from_pretrained", dropped=MODEL_DROPPED
    ),
    "nemo_automodel.NeMoAutoModelForImageTextToText.from_config": Alias(
        f"{_VLM}.from_config", dropped=MODEL_DROPPED
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
    # the same steps as their Qwen2.5-VL collate (template, answers' labels) for LLaVA-OV-1.5
    "nemo_automodel.components.datasets.vlm.collate_fns.llava_onevision_collate_fn": Alias(None),
    # their default collate with Gemma 4's thinking prefix: `collate.assistant_prefix` here
    "nemo_automodel.components.datasets.vlm.collate_fns.gemma4_prefix_collate_fn": Alias(
        None,
        dropped={"max_length": "samples are not truncated here (longer ones would be cut)"},
    ),
    _VLM_COLLATER: Alias(
        None,  # finetune.vlm's VisionChatCollator: the processor's template, labels on answers
        dropped={"max_length": "samples are not truncated here (longer ones would be cut)"},
    ),
}
