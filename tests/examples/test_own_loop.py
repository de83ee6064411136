"""examples/own_loop/train.py: two ranks, stopped mid-run and rerun, train bitwise as an
uninterrupted run, and transformers loads the final model."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from _shared import REPO

SCRIPT = REPO / "examples/own_loop/train.py"
STEPS = ["--steps", "6", "--save-every", "3"]


def losses(stdout: str) -> dict[int, str]:
    """{step: the loss as printed (repr of the float: every bit)}."""
    return {int(s): loss for s, loss in re.findall(r"^step (\d+) loss (\S+)", stdout, re.M)}


def test_interrupted_two_rank_run_resumes_bitwise_and_saves_a_transformers_model(
    tmp_path: Path, run_torchrun
) -> None:
    from transformers import AutoModelForCausalLM

    cut = tmp_path / "cut"
    with ThreadPoolExecutor(2) as pool:  # the uninterrupted run and the interrupted one, together
        whole_run = pool.submit(run_torchrun, SCRIPT, "--run-dir", str(tmp_path / "whole"), *STEPS)
        first = run_torchrun(SCRIPT, "--run-dir", str(cut), *STEPS, "--stop-after", "4")
        whole = losses(whole_run.result())
    assert sorted(whole) == list(range(1, 7))
    assert sorted(losses(first)) == [1, 2, 3, 4]  # the last checkpoint is step 3's
    second = run_torchrun(SCRIPT, "--run-dir", str(cut), *STEPS)
    assert "resumed from" in second and "epoch_0_step_3" in second
    assert sorted(losses(second)) == [4, 5, 6]
    assert {**losses(first), **losses(second)} == whole  # step 4 twice, alike

    final = [AutoModelForCausalLM.from_pretrained(d / "checkpoints/epoch_0_step_6/model") for d in (tmp_path / "whole", cut)]  # fmt: skip
    for (name, a), b in zip(final[0].state_dict().items(), final[1].state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(a, b), name
    ids = torch.tensor([[2, 7, 9, 10, 5]])
    assert final[0](ids).logits.shape == (1, 5, final[0].config.vocab_size)
