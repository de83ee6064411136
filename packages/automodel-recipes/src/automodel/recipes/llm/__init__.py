"""LLM recipes (fine-tuning, pre-training, distillation, benchmark) and their text-data parts."""

from ._data import LM_SECTIONS, build_loaders, build_loss, build_tokenizer, real_tokens
from .finetune import SECTIONS, FinetuneRecipeForCausalLM, main, pretrain_main

__all__ = [
    "LM_SECTIONS",
    "SECTIONS",
    "FinetuneRecipeForCausalLM",
    "build_loaders",
    "build_loss",
    "build_tokenizer",
    "main",
    "pretrain_main",
    "real_tokens",
]
