"""The training step never reads a tensor's value into Python: on a GPU each such read waits for
the device. Its numbers stay on the device until a log step reads them all back at once."""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from _shared import SFT
from torch.overrides import TorchFunctionMode

from automodel.core.config import load_config
from automodel.recipes import PendingStep, read_back
from automodel.recipes._nonfinite import step_unless_nonfinite
from automodel.recipes.llm import FinetuneRecipeForCausalLM
from automodel.recipes.llm.finetune import SECTIONS

# Tensor methods that copy a value to the host (on CUDA: a wait for every queued kernel).
READS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy"}


# transformers' mask preparation inside the model's forward reads once per forward (are the rows
# packed? can the padding mask be skipped?): the model's code, the same under any trainer.
MODEL_MASKS = f"transformers{os.sep}masking_utils.py"


class HostReads(TorchFunctionMode):
    """Records every read of a tensor's value while `counting` is set, by the code that made it."""

    def __init__(self) -> None:
        super().__init__()
        self.counting = False
        self.reads: list[str] = []  # "name file:line" of each read
        self.model_reads: list[str] = []  # those of transformers' mask preparation

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if self.counting and name in READS:
            frame = sys._getframe(1)
            while f"{os.sep}torch{os.sep}" in frame.f_code.co_filename:  # torch's own wrappers
                frame = frame.f_back
            where = f"{name} {frame.f_code.co_filename}:{frame.f_lineno}"
            (self.model_reads if MODEL_MASKS in where else self.reads).append(where)
        return func(*args, **(kwargs or {}))


def _is_sync(warning: warnings.WarningMessage) -> bool:
    """A warning of torch.cuda's sync debug mode."""
    return "synchroniz" in str(warning.message)


def _counted(mode: HostReads, fn: Callable, counting: bool) -> Callable:
    """`fn` with counting switched to `counting` inside it."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        before, mode.counting = mode.counting, counting
        try:
            return fn(*args, **kwargs)
        finally:
            mode.counting = before

    return wrapped


def test_no_step_reads_a_tensor_until_the_log_step_reads_them_all(
    small_data, tmp_path, monkeypatch_module
):
    """Forward, backward, clipping, the non-finite check and the optimizer step of four steps
    read nothing back (transformers' own mask preparation aside); the four steps' rows come
    back in one read at the log step."""
    overrides = [
        "--step_scheduler.global_batch_size=8",
        "--step_scheduler.local_batch_size=4",  # two micro-batches per step
        "--step_scheduler.max_steps=4",
        "--step_scheduler.val_every_steps=100",
        "--step_scheduler.ckpt_every_steps=100",
        "--checkpoint.save_final=false",
        f"--dataset.path={small_data / 'train.jsonl'}",
        "--~validation_dataset",
        f"--logging.run_dir={tmp_path}",
        f"--checkpoint.checkpoint_dir={tmp_path}/checkpoints",
        "--+logging.progress=false",
        "--+optimizer.fused=true",  # what the recipe picks on CUDA: it skips on the device
        "--+packed_sequence.packed_sequence_size=64",
    ]
    recipe = FinetuneRecipeForCausalLM(load_config(SFT, overrides, sections=SECTIONS))
    recipe.setup()
    mode, recorded = HostReads(), []
    # the metrics sink: whatever it does at a log step is not part of a step
    recipe.telemetry.log_train = lambda step, show, write=False: recorded.append(step)
    recipe.forward_backward = _counted(mode, recipe.forward_backward, True)
    recipe.optimizer_step = _counted(mode, recipe.optimizer_step, True)
    # counting a host batch's labels and tokens reads host memory, which waits for nothing
    recipe.count_targets = _counted(mode, recipe.count_targets, False)
    recipe.real_tokens = _counted(mode, recipe.real_tokens, False)
    on_cuda = recipe.device.type == "cuda"  # the GPU suite runs this test there
    with mode, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if on_cuda:  # also the waits no Python read shows: pageable copies, nonzero, ...
            torch.cuda.set_sync_debug_mode("warn")
        try:
            assert recipe.train_steps()
        finally:
            if on_cuda:
                torch.cuda.set_sync_debug_mode(0)
        assert mode.reads == []
        syncs = [f"{w.filename}:{w.lineno} {w.message}" for w in caught if _is_sync(w)]
        assert [sync for sync in syncs if MODEL_MASKS not in sync] == []
        mode.counting = True
        float(recorded[0].values[0])  # the guard sees a read where there is one
        mode.counting = False
    assert [read.split()[0] for read in mode.reads] == ["__float__"]

    assert all(isinstance(step, PendingStep) for step in recorded)
    samples = read_back(recorded)
    assert [s.step for s in samples] == [1, 2, 3, 4]
    assert all(math.isfinite(s.loss) and s.grad_norm > 0 and not s.skipped for s in samples)
    assert all(s.num_label_tokens > 0 and s.num_real_tokens >= s.num_label_tokens for s in samples)
    assert samples[-1].loss < samples[0].loss


@pytest.mark.parametrize("fused", [True, False])
def test_a_nonfinite_step_leaves_weights_and_optimizer_state_alone(fused):
    """A fused optimizer skips on the device without a read; any other needs one read."""
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.AdamW([param], lr=0.1, fused=fused, foreach=None if fused else True)
    param.grad = torch.full((4,), 0.5)
    step_unless_nonfinite(optimizer, torch.tensor(True))
    after_one = param.detach().clone()
    state = {k: v.clone() for k, v in optimizer.state[param].items()}
    assert not torch.equal(after_one, torch.ones(4))

    param.grad = torch.full((4,), float("nan"))
    with HostReads() as mode:
        mode.counting = True
        step_unless_nonfinite(optimizer, torch.isfinite(param.grad).all())
        mode.counting = False
    assert torch.equal(param.detach(), after_one)
    for key, value in optimizer.state[param].items():
        assert torch.equal(value, state[key]), key  # the step count and both moments too
    assert [read.split()[0] for read in mode.reads] == ([] if fused else ["__bool__"])
    assert not hasattr(optimizer, "found_inf")
