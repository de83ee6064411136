"""The VLM recipe (fine-tuning image-text-to-text models) and its data parts."""

from ._data import VLM_SECTIONS, build_processor, build_vlm_loaders
from .finetune import SECTIONS, FinetuneRecipeForVLM, main

__all__ = [
    "SECTIONS",
    "VLM_SECTIONS",
    "FinetuneRecipeForVLM",
    "build_processor",
    "build_vlm_loaders",
    "main",
]
