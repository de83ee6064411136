"""examples/own_loop/train.py on two ranks: a rerun from a mid-run checkpoint trains bitwise as
the uninterrupted run, and transformers loads the final model."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from _shared import REPO

SCRIPT = REPO / "examples/own_loop/train.py"
STEPS = ["--steps", "6", "--save-every", "3"]


def losses(stdout: str) -> dict[int, str]:
    """{step: the loss as printed (repr of the float: every bit)}."""
    return {int(s): loss for s, loss in re.findall(r"^step (\d+) loss (\S+)", stdout, re.M)}


def test_a_rerun_after_an_interruption_resumes_bitwise_and_saves_a_transformers_model(
    tmp_path: Path, run_torchrun
) -> None:
    """The interrupted run is the uninterrupted one's folder as a stop after step 3's save
    leaves it (its newest checkpoint, step 3's; the logs of later steps are the run's own
    stdout), so two launches check what three would: the rerun continues from step 4."""
    from transformers import AutoModelForCausalLM

    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    whole = losses(run_torchrun(SCRIPT, "--run-dir", str(whole_dir), *STEPS))
    assert sorted(whole) == list(range(1, 7))
    step3 = "checkpoints/epoch_0_step_3"
    shutil.copytree(whole_dir / step3, cut_dir / step3)
    (cut_dir / "checkpoints/LATEST").write_text("epoch_0_step_3\n")
    rerun = run_torchrun(SCRIPT, "--run-dir", str(cut_dir), *STEPS)
    assert "resumed from" in rerun and "epoch_0_step_3" in rerun
    resumed = losses(rerun)
    assert sorted(resumed) == [4, 5, 6]
    assert resumed == {step: whole[step] for step in (4, 5, 6)}  # every bit of every loss

    final = [AutoModelForCausalLM.from_pretrained(d / "checkpoints/epoch_0_step_6/model") for d in (whole_dir, cut_dir)]  # fmt: skip
    for (name, a), b in zip(final[0].state_dict().items(), final[1].state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(a, b), name
    ids = torch.tensor([[2, 7, 9, 10, 5]])
    assert final[0](ids).logits.shape == (1, 5, final[0].config.vocab_size)
