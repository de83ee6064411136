"""Build the small "pretrained" base that tiny_lora.yaml adapts (seeded, reproducible, ~10 s).

It is the tiny_sft.yaml model after 150 full fine-tuning steps on the word-reversal task: good
enough that it has learnt the chat format, far from done, so LoRA has something left to learn.

    uv run python examples/llm_finetune/assets/build_lora_base.py
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from automodel.core.config import load_config
from automodel.recipes.llm import FinetuneRecipeForCausalLM

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
OUT = HERE / "tiny_llama_base"
KEEP = ("config.json", "generation_config.json", "model.safetensors")


def main() -> None:
    """Train 150 steps with tiny_sft.yaml and keep the weights and HF config."""
    os.chdir(REPO)  # the example config's paths are relative to the repository root
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            REPO / "examples/llm_finetune/tiny_sft.yaml",
            [
                "--step_scheduler.max_steps=150",
                "--step_scheduler.val_every_steps=150",
                "--step_scheduler.ckpt_every_steps=150",
                "--lr_scheduler.warmup_steps=10",
                f"--logging.run_dir={tmp}",
                f"--checkpoint.checkpoint_dir={tmp}/checkpoints",
            ],
        )
        recipe = FinetuneRecipeForCausalLM(cfg)
        recipe.setup()
        recipe.run_train_validation_loop()
        model_dir = recipe.checkpointer.latest() / "model"
        shutil.rmtree(OUT, ignore_errors=True)
        OUT.mkdir()
        for name in KEEP:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, OUT / name)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
