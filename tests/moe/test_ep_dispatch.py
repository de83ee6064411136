"""Expert-parallel dispatch/combine: EP=2 on gloo against a single-process MoE reference.

One torchrun launch (2 ranks, gloo, CPU) runs every multi-process case of ep_worker.py; the
tests here read its per-rank JSON. The error paths and the DeepEP availability check run in
this process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from automodel.moe import _deepep, shard_experts
from automodel.moe._ep_dispatch import DispatchHandle, combine, dispatch, experts_per_rank

WORKER = Path(__file__).with_name("ep_worker.py")
RTOL = 1e-5
EP_CASES = [
    "balanced",
    "balanced_mesh",
    "top1_many_experts",
    "skewed",
    "rank1_no_tokens",
    "no_tokens_anywhere",
]


@pytest.fixture(scope="module")
def ep_run(
    tmp_path_factory: pytest.TempPathFactory, run_torchrun, worker_results
) -> dict[int, dict]:
    out = tmp_path_factory.mktemp("ep")
    run_torchrun(WORKER, str(out), timeout=120)
    return worker_results(out)


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("name", EP_CASES)
def test_ep_matches_reference(ep_run: dict, name: str, rank: int, worker_case) -> None:
    result = worker_case(ep_run, rank, name)
    for metric in ("out", "x_grad", "w_grad", "expert_grad"):
        assert result[metric] < RTOL, (metric, result[metric])
    assert result["counts"] == result["ref_counts"]
    assert sum(result["counts"]) == result["recv_rows"] == sum(result["received"])
    assert result["out_shape"] == [result["tokens"], 16]
    peer = ep_run[1 - rank][name]
    assert result["sent"][1 - rank] == peer["received"][rank]  # the splits agree pairwise


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("name", ["model_ep2_aux_loss", "model_ep2_no_balancing"])
def test_expert_parallel_model_equals_the_whole_model(
    ep_run: dict, name: str, rank: int, worker_case
) -> None:
    """shard_experts over 2 ranks: same logits, loss (+ aux loss) and gradients as EP=1."""
    result = worker_case(ep_run, rank, name)
    assert result["sharded"] == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
    assert result["expert_shapes"]["model.layers.0.mlp.experts.gate_up_proj"] == [4, 32, 32]
    assert result["gathered"] == 0.0  # full_tensor() of the DTensor shards is the whole weight
    for metric in ("logits", "loss", "grads"):
        assert result[metric] < RTOL, (metric, result[metric])
    # moe_metrics(sum_over=...): the expert load of both ranks' tokens, as one model seeing
    # all of them; the aux loss (computed per rank in training) is the mean of the ranks'
    summed, every_token = result["metrics_summed"], result["metrics_every_token"]
    assert summed.keys() == every_token.keys()
    load = {k: v for k, v in every_token.items() if "aux_loss" not in k}
    assert {k: summed[k] for k in load} == pytest.approx(load, rel=1e-6)
    assert result["metrics_local"] != summed  # this rank's tokens alone route differently
    for key in (k for k in summed if "aux_loss" in k):
        ranks = [worker_case(ep_run, r, name)["metrics_local"][key] for r in (0, 1)]
        assert summed[key] == pytest.approx(sum(ranks) / 2, rel=1e-6)


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("name", ["expert_lora_ep2_fsdp2", "expert_lora_ep2_ddp"])
def test_expert_lora_with_expert_parallelism_equals_the_whole_model(
    ep_run: dict, name: str, rank: int, worker_case
) -> None:
    """LoRA on the experts with EP=2 (FSDP2 with activation checkpointing, and DDP): each rank
    adapts its 4 experts from their slices of the whole factors; logits, the strategy-averaged
    adapter gradients, one optimizer step and the merged export equal the whole model's on
    both ranks' tokens. Before DDP's average, a rank's expert factors have gradients for its
    own experts only (rows e*r..e*r+r-1 of A, columns k*E + e of B)."""
    result = worker_case(ep_run, rank, name)
    assert result["factors"] == 12  # A and B of q_proj, gate_up_proj, down_proj in 2 layers
    for metric in ("logits", "grads", "stepped", "merged"):
        assert result[metric] < RTOL, (metric, result[metric])
    assert result["grads_abs"] < 1e-6 and result["stepped_abs"] < 1e-6
    if name.endswith("ddp"):
        seen = result["experts_with_grads"]
        assert len(seen) == 8 and all(e == [4 * rank + i for i in range(4)] for e in seen.values())


DEEPEP_CASES = [f"deepep_{name}" for name in EP_CASES if name != "balanced_mesh"]


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("name", [*DEEPEP_CASES, "deepep_balanced_mesh", "deepep_top4"])
def test_deepep_dispatcher_matches_reference(ep_run: dict, name: str, rank: int, worker_case):
    """DeepEPDispatcher on a CPU stand-in for DeepEP's kernels (tests/moe/fake_deep_ep.py)."""
    result = worker_case(ep_run, rank, name)
    for metric in ("out", "x_grad", "w_grad", "expert_grad"):
        assert result[metric] < RTOL, (metric, result[metric])
    assert result["counts"] == result["ref_counts"]
    assert sum(result["counts"]) == result["recv_rows"]
    assert result["out_shape"] == [result["tokens"], 16]
    assert result["buffers"] >= 1


def test_deepep_sends_each_token_once_per_rank(ep_run: dict, worker_case) -> None:
    """With top-4 of 8 experts over 2 ranks most tokens have several experts on one rank."""
    for rank in (0, 1):
        result = worker_case(ep_run, rank, "deepep_top4")
        assert result["received_tokens"] < result["recv_rows"]
    idle = worker_case(ep_run, 1, "deepep_rank1_no_tokens")
    assert idle["tokens"] == 0 and idle["recv_rows"] > 0 and idle["expert_grad_nonzero"]
    skewed = worker_case(ep_run, 0, "deepep_skewed")
    assert skewed["recv_rows"] == skewed["received_tokens"] == 0


@pytest.mark.parametrize("rank", [0, 1])
def test_deepep_bfloat16_exchange_close_to_float32(ep_run: dict, rank: int, worker_case):
    """Tokens travel in bfloat16 (DeepEP's dtype): within bfloat16 rounding of the reference
    (relative error of each whole tensor), and not exact, so the rounding really happened."""
    result = worker_case(ep_run, rank, "deepep_bf16")
    for metric in ("out", "x_grad", "w_grad", "expert_grad"):
        value = result[f"{metric}_norm"]
        assert 1e-5 < value < 1e-2, (metric, value)


@pytest.mark.parametrize("rank", [0, 1])
def test_deepep_model_equals_the_whole_model(ep_run: dict, rank: int, worker_case) -> None:
    """shard_experts(dispatcher="deepep"): one shared buffer, same logits, loss and gradients."""
    result = worker_case(ep_run, rank, "deepep_model_ep2_aux_loss")
    assert result["dispatchers"] == ["DeepEPDispatcher"]
    assert result["shared_buffers"] == 1
    for metric in ("logits", "loss", "grads"):
        assert result[metric] < RTOL, (metric, result[metric])


def test_edge_cases_really_happen(ep_run: dict, worker_case) -> None:
    skewed = [worker_case(ep_run, r, "skewed") for r in (0, 1)]
    assert skewed[0]["recv_rows"] == 0 and not skewed[0]["expert_grad_nonzero"]
    assert skewed[0]["sent"][0] == 0 and skewed[1]["sent"][0] == 0
    idle = worker_case(ep_run, 1, "rank1_no_tokens")
    assert idle["tokens"] == 0 and idle["recv_rows"] > 0 and idle["expert_grad_nonzero"]
    assert 0 in worker_case(ep_run, 0, "top1_many_experts")["counts"]  # idle local experts


@pytest.mark.parametrize("rank", [0, 1])
def test_bf16_combine_is_a_plain_weighted_sum(ep_run: dict, rank: int, worker_case) -> None:
    result = worker_case(ep_run, rank, "bf16_identity")
    assert result["equal"] and result["dtype"] == result["recv_dtype"] == "torch.bfloat16"


@pytest.mark.parametrize("rank", [0, 1])
def test_indivisible_experts_refused_on_every_rank(ep_run: dict, rank: int, worker_case) -> None:
    message = worker_case(ep_run, rank, "indivisible")["error_message"]
    assert message and "num_experts=5 is not divisible" in message and "ep_size=2" in message


def test_shard_experts_shards_the_expert_biases_too(single_rank_group: None, hf_model) -> None:
    """gpt-oss's experts have biases: shard_experts makes every expert parameter, biases
    included, a Shard(0) DTensor (the recipe reduces their gradients as the experts'), and the
    block through the all_to_all dispatcher (one rank) gives the same output and gradients."""
    import copy

    from torch.distributed.tensor import DTensor, Shard

    from automodel.moe import patch_hf_moe

    whole = torch.nn.Module()
    whole.mlp = hf_model("gpt_oss").model.layers[0].mlp
    patch_hf_moe(whole)
    sharded = copy.deepcopy(whole)
    assert shard_experts(sharded, None) == ["mlp.experts"]
    experts = dict(sharded.mlp.experts.named_parameters())
    assert set(experts) == {"gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"}
    for name, param in experts.items():
        assert isinstance(param, DTensor) and param.placements == (Shard(0),), name
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(7))
    outputs = [model.mlp(x)[0] for model in (whole, sharded)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    for out in outputs:
        out.square().sum().backward()
    grads = {n: p.grad for n, p in whole.named_parameters()}
    for name, param in sharded.named_parameters():
        grad = param.grad.to_local() if isinstance(param, DTensor) else param.grad
        torch.testing.assert_close(grad, grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_experts_per_rank() -> None:
    assert experts_per_rank(8, 2) == 4
    assert experts_per_rank(3, 1) == 3
    with pytest.raises(ValueError, match=r"num_experts=6 is not divisible .*ep_size=4"):
        experts_per_rank(6, 4)
    with pytest.raises(ValueError, match="ep_size >= 1"):
        experts_per_rank(4, 0)


def test_dispatch_rejects_bad_inputs_before_communicating() -> None:
    x, ids, w = torch.zeros(3, 4), torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 2)
    with pytest.raises(ValueError, match=r"x must be \[tokens, hidden\]"):
        dispatch(x[None], ids, w, None, 4)
    with pytest.raises(ValueError, match=r"topk_ids must be \[tokens, k\] with tokens=3"):
        dispatch(x, ids[:2], w, None, 4)
    with pytest.raises(ValueError, match="integer tensor"):
        dispatch(x, ids.float(), w, None, 4)
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        dispatch(x, ids + 4, w, None, 4)
    with pytest.raises(ValueError, match=r"topk_weights must have the shape of topk_ids \(3, 2\)"):
        dispatch(x, ids, w[:, :1], None, 4)


def test_combine_rejects_mismatched_shapes() -> None:
    perm = torch.arange(6)
    handle = DispatchHandle(None, perm, perm, perm, perm, [6], [6], topk_weights=torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"y must be \[6, hidden\]"):
        combine(torch.zeros(5, 4), handle)


def test_deepep_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_deepep, "_import_deep_ep", lambda: None)
    assert not _deepep.deepep_available()
    with pytest.raises(RuntimeError, match=r"pip install automodel-moe\[deepep\].*NVSHMEM"):
        _deepep.require_deepep()
    with pytest.raises(RuntimeError, match=r"automodel-moe\[deepep\]"):
        _deepep.DeepEPDispatcher(None, 8)  # refused before touching the group
    model = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match=r"automodel-moe\[deepep\]"):
        shard_experts(model, None, dispatcher="deepep")  # before looking at the model
    with pytest.raises(ValueError, match=r"dispatcher must be one of .*'nccl'"):
        shard_experts(model, None, dispatcher="nccl")


def test_deepep_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_deepep, "_import_deep_ep", lambda: sys)  # any module stands in
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not _deepep.deepep_available()
    with pytest.raises(RuntimeError, match=r"needs CUDA.*automodel-moe\[deepep\]"):
        _deepep.require_deepep()


def test_imports_with_torch_only() -> None:
    code = (
        "import sys, automodel.moe._ep_dispatch, automodel.moe._deepep\n"
        "bad = [m for m in sys.modules if m.startswith('automodel.') and "
        "not m.startswith('automodel.moe') or m == 'deep_ep']\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
