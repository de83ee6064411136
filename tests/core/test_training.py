"""Tests of automodel.core.training: batch math, step scheduler, metrics, FLOPs, RNG, clipping."""

from __future__ import annotations

import io
import itertools
import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from automodel.core.config import ConfigError
from automodel.core.training import (
    MetricsSample,
    StepScheduler,
    check_batch_math,
    clip_grad_norm,
    dense_decoder_flops_per_token,
    mfu,
    peak_flops_for_device,
    peak_memory_gib,
    rng_state,
    set_rng_state,
    set_seed,
)


# -- batch math ----------------------------------------------------------------------------
def test_batch_math_derives_grad_acc_steps():
    assert check_batch_math(32, 4, dp_size=2) == 4
    assert check_batch_math(8, 8) == 1
    assert check_batch_math(48, 2, dp_size=3, grad_acc_steps=8) == 8


def test_batch_math_not_divisible_shows_the_numbers():
    with pytest.raises(ConfigError) as err:
        check_batch_math(16, 3)
    assert (
        "step_scheduler: global_batch_size 16 is not divisible by local_batch_size 3 x "
        "dp_size 1 = 3" in str(err.value)
    )
    with pytest.raises(ConfigError, match="local_batch_size 4 x dp_size 3 = 12"):
        check_batch_math(32, 4, dp_size=3)


def test_batch_math_disagreeing_grad_acc_steps():
    with pytest.raises(ConfigError) as err:
        check_batch_math(32, 4, dp_size=2, grad_acc_steps=2)
    message = str(err.value)
    assert "grad_acc_steps 2 disagrees" in message
    assert "global_batch_size 32 / (local_batch_size 4 x dp_size 2) = 4" in message


def test_batch_math_rejects_non_positive_values_all_at_once():
    with pytest.raises(ConfigError) as err:
        check_batch_math(0, -1, dp_size=1, grad_acc_steps=0)
    assert len(err.value.problems) == 3
    assert "global_batch_size must be an integer >= 1, got 0" in str(err.value)


# -- step scheduler ------------------------------------------------------------------------
def _run(sched: StepScheduler, data) -> list[tuple[int, int, list]]:
    return [(sched.step, sched.epoch, group) for group in sched.steps(data)]


def test_step_scheduler_groups_micro_batches_and_drops_the_trailing_partial_group():
    sched = StepScheduler(global_batch_size=12, local_batch_size=2, dp_size=2, num_epochs=2)
    assert sched.grad_acc_steps == 3
    data = list(range(7))  # two full groups per epoch, item 6 is dropped
    assert _run(sched, data) == [
        (1, 0, [0, 1, 2]),
        (2, 0, [3, 4, 5]),
        (3, 1, [0, 1, 2]),
        (4, 1, [3, 4, 5]),
    ]
    assert sched.state_dict() == {
        "step": 4,
        "epoch": 2,
        "micro_batches_in_epoch": 0,
        "local_batch_size": 2,
        "dp_size": 2,
    }
    assert sched.done
    assert list(sched.steps(data)) == []


def test_step_scheduler_max_steps_stops_mid_epoch_without_consuming_more():
    sched = StepScheduler(global_batch_size=2, local_batch_size=1, max_steps=3, num_epochs=None)
    pulled = []

    def loader():
        for i in range(100):
            pulled.append(i)
            yield i

    groups = [g for g in sched.steps(loader())]
    assert groups == [[0, 1], [2, 3], [4, 5]]
    assert pulled == [0, 1, 2, 3, 4, 5]
    assert sched.state_dict()["micro_batches_in_epoch"] == 6


def test_step_scheduler_max_steps_across_epochs():
    sched = StepScheduler(global_batch_size=2, local_batch_size=1, max_steps=5, num_epochs=10)
    steps = _run(sched, list(range(4)))
    assert [(s, e) for s, e, _ in steps] == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2)]
    assert sched.total_steps(4) == 5
    assert StepScheduler(2, 1, num_epochs=3).total_steps(5) == 6


def test_step_scheduler_flags():
    sched = StepScheduler(
        global_batch_size=1,
        local_batch_size=1,
        max_steps=6,
        val_every_steps=3,
        ckpt_every_steps=4,
        log_every_steps=2,
    )
    assert not (sched.is_log_step or sched.is_val_step or sched.is_ckpt_step or sched.is_last_step)
    flags = []
    for _ in sched.steps(range(100)):
        flags.append(
            (
                sched.step,
                sched.is_log_step,
                sched.is_val_step,
                sched.is_ckpt_step,
                sched.is_last_step,
            )
        )
    assert flags == [
        (1, False, False, False, False),
        (2, True, False, False, False),
        (3, False, True, False, False),
        (4, True, False, True, False),
        (5, False, False, False, False),
        (6, True, True, False, True),
    ]


def test_step_scheduler_last_step_from_epochs_and_dataloader_length():
    sched = StepScheduler(global_batch_size=2, local_batch_size=1, num_epochs=2)
    last = [sched.is_last_step for _ in sched.steps(list(range(5)))]
    assert last == [False, False, False, True]


def test_step_scheduler_calls_set_epoch_on_the_sampler():
    class Sampler:
        def __init__(self):
            self.epochs = []

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)

    class Loader(list):
        sampler = Sampler()

    loader = Loader(range(4))
    list(StepScheduler(2, 2, num_epochs=3).steps(loader))
    assert loader.sampler.epochs == [0, 1, 2]


def test_step_scheduler_resume_mid_epoch_gives_the_same_remaining_groups():
    data = list(range(10))

    def make() -> StepScheduler:
        return StepScheduler(global_batch_size=3, local_batch_size=1, num_epochs=3)

    full = _run(make(), data)
    assert len(full) == 9  # 3 groups per epoch, item 9 dropped

    first = make()
    it = first.steps(data)
    head = []
    for _ in range(5):
        group = next(it)
        head.append((first.step, first.epoch, group))
    state = first.state_dict()
    assert (state["step"], state["epoch"], state["micro_batches_in_epoch"]) == (5, 1, 6)

    resumed = make()
    resumed.load_state_dict(state)

    class ResumingLoader:
        """A dataloader that restores its position once, like a StatefulDataLoader."""

        def __init__(self, items, skip):
            self.items, self.skip = items, skip

        def __iter__(self):
            skip, self.skip = self.skip, 0
            return iter(self.items[skip:])

    tail = _run(resumed, ResumingLoader(data, state["micro_batches_in_epoch"]))
    assert head + tail == full


def test_step_scheduler_resumes_a_shuffled_stateful_dataloader_mid_epoch():
    from automodel.core.data import build_dataloader

    data = [{"input_ids": [i], "labels": [i]} for i in range(22)]

    def make() -> tuple[StepScheduler, object]:
        loader = build_dataloader(data, 2, shuffle=True, seed=7, pad_token_id=0)
        sched = StepScheduler(
            global_batch_size=4, local_batch_size=2, max_steps=12, num_epochs=None
        )
        return sched, loader

    def ids(groups) -> list[list[int]]:
        return [[int(x) for b in group for x in b["input_ids"].flatten()] for group in groups]

    sched, loader = make()
    full = ids(sched.steps(loader))
    assert len(full) == 12  # 5 steps per epoch: crosses two epoch boundaries

    sched, loader = make()
    it = sched.steps(loader)
    head = ids(next(it) for _ in range(7))  # stop in the middle of the second epoch
    states = sched.state_dict(), loader.state_dict()
    sched, loader = make()
    sched.load_state_dict(states[0])
    loader.load_state_dict(states[1])
    assert head + ids(sched.steps(loader)) == full


def test_step_scheduler_resume_at_epoch_end():
    data = list(range(4))
    sched = StepScheduler(global_batch_size=2, local_batch_size=1, num_epochs=2)
    it = sched.steps(data)
    next(it), next(it)
    state = sched.state_dict()
    assert (state["step"], state["epoch"], state["micro_batches_in_epoch"]) == (2, 0, 4)
    resumed = StepScheduler(global_batch_size=2, local_batch_size=1, num_epochs=2)
    resumed.load_state_dict(state)
    loaders = iter([[], data])  # the restored epoch is exhausted, the next one is full

    class Loader:
        def __iter__(self):
            return iter(next(loaders))

    assert _run(resumed, Loader()) == [(3, 1, [0, 1]), (4, 1, [2, 3])]


def test_step_scheduler_state_converts_to_another_data_parallel_size():
    """2 ranks × 2 accumulations at step 3 = 1 rank × 4 accumulations at step 3: same samples."""
    two_ranks = StepScheduler(global_batch_size=8, local_batch_size=2, dp_size=2, max_steps=9)
    list(itertools.islice(two_ranks.steps(list(range(20))), 3))
    state = two_ranks.state_dict()
    assert state["micro_batches_in_epoch"] == 6
    one_rank = StepScheduler(global_batch_size=8, local_batch_size=2, dp_size=1, max_steps=9)
    one_rank.load_state_dict(state)
    assert (one_rank.step, one_rank.micro_batches_in_epoch) == (3, 12)
    back = StepScheduler(global_batch_size=8, local_batch_size=2, dp_size=2, max_steps=9)
    back.load_state_dict(one_rank.state_dict())
    assert back.micro_batches_in_epoch == 6
    odd = StepScheduler(global_batch_size=12, local_batch_size=4, dp_size=3, max_steps=9)
    with pytest.raises(ValueError, match=r"8 samples into epoch 0 .* micro-batches of 4 on 3"):
        odd.load_state_dict({**state, "micro_batches_in_epoch": 2})


def test_step_scheduler_argument_errors():
    with pytest.raises(ConfigError, match="global_batch_size 10 is not divisible"):
        StepScheduler(global_batch_size=10, local_batch_size=4)
    with pytest.raises(ConfigError, match="set max_steps, num_epochs, or both"):
        StepScheduler(4, 4, max_steps=None, num_epochs=None)
    with pytest.raises(ConfigError, match="val_every_steps must be an integer >= 1"):
        StepScheduler(4, 4, val_every_steps=0)
    with pytest.raises(ValueError, match="fewer than grad_acc_steps"):
        list(StepScheduler(4, 1, max_steps=10, num_epochs=None).steps([1, 2]))
    with pytest.raises(ValueError, match="missing micro_batches_in_epoch"):
        StepScheduler(4, 4).load_state_dict({"step": 1, "epoch": 0})


# -- metrics -------------------------------------------------------------------------------
def test_metrics_sample_dict_and_format():
    sample = MetricsSample(
        step=10,
        epoch=1,
        loss=2.345678,
        lr=1e-4,
        grad_norm=0.5,
        mem=12.3456,
        tps=12345.6,
        tps_per_gpu=1543.2,
        mfu=0.4123,
        num_label_tokens=4096,
        extra={"val_loss": 2.0},
    )
    data = sample.to_dict()
    assert data["step"] == 10 and data["val_loss"] == 2.0 and "extra" not in data
    assert json.loads(json.dumps(data)) == data
    assert sample.format() == (
        "step 10 | epoch 1 | loss 2.3457 | grad_norm 0.500 | lr 1.000e-04 | mem 12.35 GiB | "
        "tps 12,346 | tps/gpu 1,543 | mfu 41.2% | label_tokens 4096 | val_loss 2"
    )
    short = MetricsSample(step=1, epoch=0, loss=float("nan"), lr=0.0)
    assert short.format() == "step 1 | epoch 0 | loss nan | lr 0.000e+00"
    assert short.to_dict()["mfu"] is None
    grouped = MetricsSample(
        step=1, epoch=0, loss=1.0, lr=0.0, extra={"moe/aux_loss": 0.5, "moe/layer_0/imbalance": 2.0}
    )
    assert grouped.format().endswith("| moe/aux_loss 0.5")  # per-layer detail: JSONL only
    assert grouped.to_dict()["moe/layer_0/imbalance"] == 2.0
    with pytest.raises(ValueError, match="reuses field names: loss"):
        MetricsSample(step=1, epoch=0, loss=1.0, lr=0.0, extra={"loss": 2.0})


def test_peak_memory_on_cpu_is_the_process_rss():
    mem = peak_memory_gib("cpu")
    assert 0.01 < mem < 64  # a python process with torch loaded: tens of MiB to a few GiB


# -- FLOPs and MFU -------------------------------------------------------------------------
def _tiny_llama(**kw):
    from transformers import LlamaConfig

    args = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
    }
    return LlamaConfig(**{**args, **kw})


def test_flops_per_token_hand_count():
    # head_dim = 64 / 4 = 16; kv width = 2 * 16 = 32; seq_len 32
    q = 2 * 64 * 64
    kv = 2 * 2 * 64 * 32
    o = 2 * 64 * 64
    attention = 2 * 2 * 4 * 16 * 32
    mlp = 3 * 2 * 64 * 128
    head = 2 * 64 * 100
    forward = 2 * (q + kv + o + attention + mlp) + head
    assert forward == 176640
    assert dense_decoder_flops_per_token(_tiny_llama(), seq_len=32) == 3 * forward


def test_flops_per_token_matches_torch_flop_counter_with_explicit_head_dim():
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaForCausalLM

    cfg = _tiny_llama(head_dim=32)  # a * d = 128 != hidden_size
    cfg._attn_implementation = "eager"  # plain matmuls: backward is exactly 2x forward
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 100, (2, 32))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    expected = dense_decoder_flops_per_token(cfg, seq_len=32) * ids.numel()
    assert counter.get_total_flops() == expected


def test_flops_per_token_needs_a_decoder_config():
    with pytest.raises(ValueError, match="intermediate_size"):
        dense_decoder_flops_per_token(
            type("Cfg", (), {"hidden_size": 8, "num_hidden_layers": 1})(), 16
        )


def test_mfu_and_peak_flops():
    assert mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1)
    assert mfu(1000.0, 1e9, None) is None
    assert peak_flops_for_device("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for_device("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for_device("NVIDIA H200") == 989e12
    assert peak_flops_for_device("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for_device("Some Other GPU") is None
    if not torch.cuda.is_available():
        assert peak_flops_for_device() is None


# -- RNG -----------------------------------------------------------------------------------
def _draw() -> tuple:
    return (
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(),
        torch.rand(3).tolist(),
    )


def test_set_seed_is_reproducible():
    set_seed(1234)
    first = _draw()
    set_seed(1234)
    assert _draw() == first
    set_seed(4321)
    assert _draw() != first


def test_rng_state_round_trip_through_torch_save_weights_only():
    set_seed(7)
    random.gauss(0, 1)  # leave a cached gaussian in python's and numpy's state
    np.random.randn()
    state = rng_state()
    assert {"python", "numpy", "torch"} <= set(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    expected = _draw()
    set_seed(99)  # scramble every generator
    _draw()
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    assert _draw() == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_state_round_trip():
    """The CUDA generator's state survives a save: the same random numbers and dropout masks."""
    set_seed(7)
    torch.rand(3, device="cuda")  # move the CUDA generator off its seed
    state = rng_state()
    assert "cuda" in state and state["cuda"].device.type == "cpu"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    ones = torch.ones(4096, device="cuda")
    expected = (torch.rand(5, device="cuda"), nn.functional.dropout(ones, 0.5))
    set_seed(99)  # scramble every generator
    torch.rand(7, device="cuda")
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    assert torch.equal(torch.rand(5, device="cuda"), expected[0])
    assert torch.equal(nn.functional.dropout(ones, 0.5), expected[1])


# -- gradient clipping ---------------------------------------------------------------------
def _model_with_grads() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    for i, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, float(i + 1))
    model[1].bias.grad = None
    return model


def test_clip_grad_norm_none_only_measures():
    model = _model_with_grads()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    expected = torch.sqrt(sum((g**2).sum() for g in grads))
    norm = clip_grad_norm(model.parameters(), max_norm=None)
    assert norm.item() == pytest.approx(expected.item())
    for p, g in zip([p for p in model.parameters() if p.grad is not None], grads, strict=True):
        assert torch.equal(p.grad, g)


def test_clip_grad_norm_scales_to_max_norm():
    model = _model_with_grads()
    before = clip_grad_norm(model.parameters(), max_norm=None)
    norm = clip_grad_norm(model.parameters(), max_norm=1.0)
    assert norm.item() == pytest.approx(before.item())  # the norm before clipping
    after = clip_grad_norm(model.parameters(), max_norm=None)
    assert after.item() == pytest.approx(1.0, rel=1e-4)
    assert clip_grad_norm(model.parameters(), max_norm=1e6).item() == pytest.approx(1.0, rel=1e-4)
    assert clip_grad_norm([nn.Parameter(torch.ones(2))], max_norm=1.0).item() == 0.0


def test_exact_match_counts_whole_answers_only() -> None:
    """A row counts when every labeled position's argmax is its label; rows without labels do
    not count; unlabeled positions may be anything."""
    from automodel.core.training import exact_match_counts

    labels = torch.tensor(
        [
            [-100, 3, 1, -100],  # right at both labeled positions
            [-100, 3, 1, -100],  # wrong at one
            [-100, -100, -100, -100],  # no answer: not counted
        ]
    )
    predicted = torch.tensor([[0, 3, 1, 2], [0, 3, 2, 2], [1, 1, 1, 1]])
    logits = torch.nn.functional.one_hot(predicted, num_classes=5).float()
    assert exact_match_counts(logits, labels) == (1, 2)
    assert exact_match_counts(logits[:1], labels[:1]) == (1, 1)
