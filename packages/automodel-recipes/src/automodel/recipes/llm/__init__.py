"""LLM recipes: fine-tuning and pre-training of Hugging Face causal LMs."""

from .finetune import SECTIONS, FinetuneRecipeForCausalLM, main, pretrain_main

__all__ = ["SECTIONS", "FinetuneRecipeForCausalLM", "main", "pretrain_main"]
