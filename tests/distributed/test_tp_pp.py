"""Tensor, sequence, pipeline and context parallelism against single-process references.

One torchrun launch (2 ranks, gloo, CPU) runs every multi-process check in tp_pp_worker.py;
the tests here read its per-rank JSON. Torch's ring attention needs CUDA: on CPU it must refuse
with a clear message, and its numeric check runs only with 2 GPUs. The all-gather context
parallelism the recipe uses runs here.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

from automodel.distributed._cp import CPU_ERROR, make_cp_batch_and_ctx
from automodel.distributed._pp import (
    DecoderStage,
    _layer_split,
    is_multi_stage,
    pipeline_stage_count,
)
from automodel.distributed._tp import hf_tp_plan, tp_plan_for
from automodel.distributed._tp_plans import (
    GatherSequence,
    ReplicateWithGradAllReduce,
    style_from_hf,
)

WORKER = Path(__file__).with_name("tp_pp_worker.py")
TOL = 1e-5
TP_CASES = [
    "tp_llama",
    "tp_llama_builtin_plan",
    "tp_sp_llama_tied",
    "tp_qwen3",
    "tp_sp_qwen3",
    "fsdp_tp_llama",
    "fsdp_tp_sp_llama",
]
PP_CASES = [
    "pp_gpipe",
    "pp_1f1b",
    "pp_interleaved_1f1b",
    "pp_1f1b_mistral_window",
    "pp1_tp2_gpipe",
    "pp_1f1b_tied",
    "pp_1f1b_tied_frozen",  # LoRA / freeze.embeddings: nothing to sum
]


@pytest.fixture(scope="module")
def cpu_run(
    tmp_path_factory: pytest.TempPathFactory, run_torchrun, worker_results
) -> dict[int, dict]:
    out = tmp_path_factory.mktemp("tp_pp")
    run_torchrun(WORKER, "cpu", str(out), timeout=600)
    return worker_results(out)


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("name", TP_CASES)
def test_tensor_parallel_matches_single_process(
    cpu_run: dict, name: str, rank: int, worker_case
) -> None:
    result = worker_case(cpu_run, rank, name)
    assert result["logits"] < TOL and result["loss"] < TOL
    assert result["grads"] and max(result["grads"].values()) < TOL, result["grads"]
    assert result["q_local_shape"] == [16, 32]  # 4 heads x 8 split over 2 ranks
    sequence_parallel = "_sp_" in name
    assert ("tp" in result["norm_mesh_dims"]) == sequence_parallel  # replicated on tp for SP
    if "qwen3" in name:
        assert result["q_norm_is_dtensor"]  # replicated_with_grad_allreduce
    assert result["tied"] == ("tied" in name)
    assert result["q_mesh_dims"] == (["dp", "tp"] if name.startswith("fsdp") else ["tp"])


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("name", PP_CASES)
def test_pipeline_matches_single_process(cpu_run: dict, name: str, rank: int, worker_case) -> None:
    result = worker_case(cpu_run, rank, name)
    assert result["grads"] and max(result["grads"].values()) < TOL, result["grads"]
    frozen = ["model.embed_tokens.weight"] if name == "pp_1f1b_tied_frozen" else []
    assert result["grads_missing"] == frozen  # on both ends when tied
    assert result["model_layers_left"] == 0
    if name == "pp1_tp2_gpipe":  # one stage holding the whole model, TP=2 inside it
        assert result["stages"] == [0]
        assert result["layers"] == [["0", "1", "2", "3"]]
        assert "model.layers.3.mlp.down_proj.weight" in result["tp_sharded"]
        assert "lm_head.weight" in result["tp_sharded"]
        assert len(result["losses"]) == 2 and max(result["losses"]) < TOL
        return
    assert result["tp_sharded"] == []
    params = result["params"]
    if name.startswith("pp_1f1b_tied"):  # the last stage computes logits with its embedding copy
        assert result["ties_embedding"] == [True]
        assert "model.embed_tokens.weight" in params and "lm_head.weight" not in params
        assert result["layers"] == [[["0", "1"]], [["2", "3"]]][rank]
        if rank == 1:
            assert len(result["losses"]) == 4 and max(result["losses"]) < TOL
        return  # both ends' embedding gradients matched the tied model's whole gradient above
    assert not any(result["ties_embedding"])
    if name == "pp_interleaved_1f1b":  # 4 stages of one layer, loop order
        assert result["stages"] == [rank, rank + 2]
        assert result["layers"] == [[str(rank)], [str(rank + 2)]]
    else:
        assert result["stages"] == [rank]
        assert result["layers"] == [[["0", "1"]], [["2", "3"]]][rank]
    layer_ids = {p.split(".")[2] for p in params if p.startswith("model.layers.")}
    assert layer_ids == {i for stage in result["layers"] for i in stage}
    assert ("model.embed_tokens.weight" in params) == (rank == 0)
    assert ("lm_head.weight" in params) == (rank == 1)
    assert ("model.norm.weight" in params) == (rank == 1)
    if rank == 1:  # the last stage computes the losses, one per microbatch
        n_microbatches = 4 if name in ("pp_1f1b", "pp_interleaved_1f1b") else 2
        assert len(result["losses"]) == n_microbatches
        assert max(result["losses"]) < TOL


@pytest.mark.parametrize("rank", [0, 1])
def test_allgather_attention_matches_full_causal_attention(
    cpu_run: dict, rank: int, worker_case
) -> None:
    result = worker_case(cpu_run, rank, "cp_allgather_attention")
    # 4 chunks of 3: rank 0 holds the first and last, rank 1 the two middle ones
    assert result["positions"] == [[0, 1, 2, 9, 10, 11], [3, 4, 5, 6, 7, 8]][rank]
    assert max(result[k] for k in ("out", "dq", "dk", "dv")) < TOL, result


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_allgather_context_parallel_model_matches_whole_sequence(
    cpu_run: dict, kind: str, rank: int, worker_case
) -> None:
    result = worker_case(cpu_run, rank, f"cp_allgather_{kind}")
    assert result["config_attn"] == "automodel_cp_allgather"
    assert result["local_shape"] == [2, 6]  # 10 tokens padded to 12, half of them here
    assert result["positions"] == [[0, 1, 2, 9, 10, 11], [3, 4, 5, 6, 7, 8]][rank]
    assert result["loss"] < TOL
    assert result["grads"] and max(result["grads"].values()) < TOL, result["grads"]


@pytest.mark.parametrize("rank", [0, 1])
def test_allgather_context_parallel_keeps_packed_documents_apart(
    cpu_run: dict, rank: int, worker_case
) -> None:
    result = worker_case(cpu_run, rank, "cp_allgather_documents")
    # chunks 0 and 3 (rank 0), 1 and 2 (rank 1) of the rows padded to 12:
    # [0 1 2 | 3 0 1 | 2 3 4 | 5 0 1] and [0 1 2 | 0 1 2 | 3 0 1 | 2 0 1]
    expected = {
        0: [[0, 1, 2, 5, 0, 1], [0, 1, 2, 2, 0, 1]],
        1: [[3, 0, 1, 2, 3, 4], [0, 1, 2, 3, 0, 1]],
    }
    assert result["positions"] == expected[rank]
    assert result["loss"] < TOL
    assert result["grads"] and max(result["grads"].values()) < TOL, result["grads"]


@pytest.mark.parametrize("rank", [0, 1])
def test_context_parallel_refuses_cpu_mesh(cpu_run: dict, rank: int, worker_case) -> None:
    assert worker_case(cpu_run, rank, "cp_cpu")["error_message"] == CPU_ERROR


def test_context_parallel_error_message() -> None:
    mesh = SimpleNamespace(device_type="cpu", size=lambda: 2)
    ids = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(
        RuntimeError, match=r"context parallelism needs CUDA .*set cp_size: 1 on CPU"
    ):
        make_cp_batch_and_ctx(mesh, {"input_ids": ids})
    one = SimpleNamespace(device_type="cpu", size=lambda: 1)
    batch, ctx = make_cp_batch_and_ctx(one, {"input_ids": ids})  # cp_size 1: a no-op
    assert batch["input_ids"] is ids
    with ctx:
        pass


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="context parallelism needs 2 CUDA GPUs")
def test_context_parallel_matches_full_sequence_on_cuda(
    tmp_path: Path, run_torchrun, worker_case, worker_results
) -> None:
    run_torchrun(WORKER, "cp", str(tmp_path), timeout=600)
    run = worker_results(tmp_path)
    for rank in (0, 1):
        for name in ("cp_mha_fp32", "cp_gqa_bf16"):
            result = worker_case(run, rank, name)
            tol = 1e-4 if "fp32" in name else 5e-2
            assert result["local_seq"] == 8
            assert result["loss_rel"] < tol
            assert max(result["grads_rel"].values()) < tol, result["grads_rel"]


@pytest.fixture
def tiny_llama(tiny_llama_config):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(tiny_llama_config())


def test_plan_from_the_models_own_hf_plan(tiny_llama) -> None:
    model = tiny_llama
    hf = hf_tp_plan(model)
    assert hf["model.layers.*.self_attn.q_proj"] == "colwise"
    assert hf["lm_head"] == "colwise_gather_output"
    plan = tp_plan_for(model)
    assert set(plan) == set(hf)
    assert type(plan["model.layers.*.mlp.down_proj"]) is RowwiseParallel
    assert type(plan["model.embed_tokens"]) is RowwiseParallel  # vocabulary-parallel embedding
    assert repr(plan["lm_head"]) == repr(style_from_hf("lm_head", "colwise_rep"))


def test_builtin_plan_matches_the_hf_plan_for_llama(tiny_llama) -> None:
    model = tiny_llama
    expected = {k: repr(v) for k, v in tp_plan_for(model).items()}
    model._tp_plan = {}
    model.config.base_model_tp_plan = None
    assert hf_tp_plan(model) is None
    assert {k: repr(v) for k, v in tp_plan_for(model).items()} == expected  # q/k_norm dropped


def test_sequence_parallel_plan_layout(tiny_llama) -> None:
    plan = tp_plan_for(tiny_llama, sequence_parallel=True)
    assert type(plan["model.layers.*.input_layernorm"]) is SequenceParallel
    assert type(plan["model.layers.*.self_attn"]) is GatherSequence
    assert type(plan["model.layers.*.mlp"]) is GatherSequence
    assert plan["model.norm"].use_local_output
    assert type(plan["lm_head"]) is ColwiseParallel
    assert "Shard(dim=1)" in repr(plan["model.layers.*.self_attn.o_proj"])


def test_a_stage_uses_the_models_plan(tiny_llama) -> None:
    model = tiny_llama
    stage = DecoderStage(model.model, model.lm_head, range(1, 2), 1, 2, None, hf_tp_plan(model))
    plan = tp_plan_for(stage)  # the middle/last stage: no embedding in the plan
    assert "model.embed_tokens" not in plan
    assert type(plan["model.layers.*.self_attn.q_proj"]) is ColwiseParallel
    assert "lm_head" in plan
    with pytest.raises(NotImplementedError, match="inside pipeline stages"):
        tp_plan_for(stage, sequence_parallel=True)


def test_hf_style_strings() -> None:
    assert isinstance(
        style_from_hf("x", "replicated_with_grad_allreduce"), ReplicateWithGradAllReduce
    )
    assert style_from_hf("x", "replicate") is None
    with pytest.raises(NotImplementedError, match="'packed_colwise'"):
        style_from_hf("model.layers.*.mlp.gate_up_proj", "packed_colwise")


def test_layer_split() -> None:
    assert _layer_split(4, 2, None) == [range(0, 2), range(2, 4)]
    assert _layer_split(5, 2, None) == [range(0, 3), range(3, 5)]
    assert _layer_split(4, 2, [1, 3]) == [range(0, 1), range(1, 4)]
    with pytest.raises(ValueError, match="cannot fill"):
        _layer_split(2, 4, None)


def test_pipeline_stage_count() -> None:
    """One stage per rank, two when interleaved; with layers per stage, the ceiling of the
    layers over it, rounded to a multiple of pp_size only when asked."""
    assert pipeline_stage_count(8, 2, "1f1b") == 2
    assert pipeline_stage_count(8, 2, "interleaved_1f1b") == 4
    assert pipeline_stage_count(8, 2, "interleaved1f1b", layers_per_stage=2) == 4
    assert pipeline_stage_count(8, 2, "looped_bfs", layers_per_stage=1) == 8
    assert pipeline_stage_count(8, 2, "gpipe", layers_per_stage=4) == 2
    assert pipeline_stage_count(10, 4, "interleaved_1f1b", 1, rounding="down") == 8
    assert pipeline_stage_count(10, 4, "interleaved_1f1b", 1, rounding="up") == 12
    with pytest.raises(ValueError, match="not a multiple of pp_size 4: change layers_per_stage"):
        pipeline_stage_count(10, 4, "interleaved_1f1b", 1)
    with pytest.raises(ValueError, match="use at least 4 layers per stage"):
        pipeline_stage_count(8, 2, "1f1b", layers_per_stage=2)
    with pytest.raises(ValueError, match="use at most 2 layers per stage"):
        pipeline_stage_count(8, 2, "interleaved_1f1b", layers_per_stage=4)
    assert is_multi_stage("interleaved_1f1b") and not is_multi_stage("1f1b")
