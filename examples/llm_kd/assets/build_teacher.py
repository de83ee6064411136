"""Build the teacher that examples/llm_kd/tiny_kd.yaml distils (seeded, reproducible, ~30 s).

It is the tiny_sft.yaml model (hidden 64, 2 layers) fine-tuned for STEPS steps on the
word-reversal task: it has learnt the task well, and its output distributions are not yet
one-hot, so they tell the student more than the labels alone.

    uv run python examples/llm_kd/assets/build_teacher.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from automodel.recipes.llm import main as finetune

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
OUT = HERE / "tiny_teacher"
STEPS = 600
FILES = ("config.json", "generation_config.json", "model.safetensors")


def train_teacher(run_dir: Path) -> Path:
    """Fine-tune tiny_sft.yaml's model for STEPS steps into `run_dir`; its final model folder."""
    code = finetune(
        [
            "-c", "examples/llm_finetune/tiny_sft.yaml",
            f"--step_scheduler.max_steps={STEPS}",
            f"--step_scheduler.val_every_steps={STEPS}",
            f"--step_scheduler.ckpt_every_steps={STEPS}",
            "--lr_scheduler.warmup_steps=10",
            f"--logging.run_dir={run_dir}",
            f"--checkpoint.checkpoint_dir={run_dir}/checkpoints",
            "--logging.progress=false",
        ]
    )  # fmt: skip
    if code != 0:
        sys.exit(code)
    checkpoints = run_dir / "checkpoints"
    return checkpoints / (checkpoints / "LATEST").read_text().strip() / "model"


if __name__ == "__main__":
    os.chdir(REPO)  # the example config's paths are relative to the repository root
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = train_teacher(Path(tmp))
        shutil.rmtree(OUT, ignore_errors=True)
        OUT.mkdir()
        for name in FILES:
            shutil.copyfile(model_dir / name, OUT / name)
    print(f"wrote {OUT}")
