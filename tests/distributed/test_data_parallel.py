"""Data parallelism on two CPU processes (torchrun, gloo): meshes, reductions, FSDP2 / HSDP / DDP.

One launch runs every multi-process check (see dp_worker.py) and writes one JSON per rank; the
tests below read them. Training is compared with rank 0's single-process runs of the same seeded
tiny Llama:

* "halves": one process accumulating the two half-batches' gradients, each scaled by
  1 / global label tokens, which is the float32 computation the two ranks do together: the
  distributed losses and weights must match it exactly (observed: bitwise);
* "full batch": one process, one backward over the whole batch: losses within 1e-6 relative
  (observed ~1.5e-7); weights within the float32 bound measured in the same worker (one
  process, halves vs full batch; AdamW turns the rounding noise of ~1e-10 gradients into
  steps of up to ~6e-5 after 3 steps at lr 1e-2), asserted below 2e-4 absolute.

A few single-process checks (strategy names and options, block discovery, no-op helpers) run
in this process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from automodel.distributed import (
    DDPStrategy,
    FSDP2Strategy,
    NoStrategy,
    Strategy,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    build_strategy,
    destroy_distributed,
    dp_rank_and_size,
    global_label_tokens,
    init_distributed,
    is_main_process,
    main_process_first,
)
from automodel.distributed._strategy import decoder_blocks

WORKER = Path(__file__).with_name("dp_worker.py")
FP32_RUNS = (
    "fsdp2",
    "fsdp2_no_reshard",
    "fsdp2_ac",
    "hsdp",
    "ddp",
    "ddp_ac",
    "fsdp2_frozen",
    "ddp_frozen",
    "fsdp2_cpu_offload",
)
NO_SYNC_RUNS = ("fsdp2_no_sync", "ddp_no_sync")
LOSS_RTOL = 1e-6  # distributed vs one process on the whole batch, float32
WEIGHT_ATOL = 2e-4  # idem, after 3 AdamW steps (see the module docstring)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, run_torchrun) -> dict[int, dict]:
    out = tmp_path_factory.mktemp("dp")
    started = time.perf_counter()
    run_torchrun(WORKER, str(out))
    print(f"torchrun launch: {time.perf_counter() - started:.1f} s")
    return {r: json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)}


# ------------------------------------------------------------------ environment, meshes


@pytest.mark.parametrize("rank", [0, 1])
def test_init_distributed_reads_the_torchrun_environment(results, rank: int) -> None:
    result = results[rank]
    assert result["env"] == {
        "rank": rank,
        "local_rank": rank,
        "world_size": 2,
        "device": "cpu",
        "backend": "gloo",
        "is_main": rank == 0,
    }
    assert result["again_same"]  # a second call returns the same DistEnv


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize(
    ("key", "sizes", "views", "fsdp_mesh"),
    [
        ("dp2", (1, 1, 2, 1, 1), (2, 2, 2), (["dp_shard_cp"], [2])),
        ("hsdp", (1, 2, 1, 1, 1), (2, 1, 2), (["dp_replicate", "dp_shard_cp"], [2, 1])),
        ("tp2", (1, 1, 1, 1, 2), (1, 1, 1), (["dp_shard_cp"], [1])),
        ("cp2", (1, 1, 1, 2, 1), (1, 2, 2), (["dp_shard_cp"], [2])),
        ("pp2", (2, 1, 1, 1, 1), (1, 1, 1), (["dp_shard_cp"], [1])),
    ],
)
def test_mesh_dims_views_and_dp_rank(results, rank, key, sizes, views, fsdp_mesh) -> None:
    mesh = results[rank]["mesh"][key]
    assert mesh["dims"] == ["pp", "dp_replicate", "dp_shard", "cp", "tp"]
    assert tuple(mesh["sizes"].values()) == sizes
    assert (mesh["views"]["dp"], mesh["views"]["dp_shard_cp"], mesh["views"]["dp_cp"]) == views
    assert (mesh["fsdp_mesh"]["dims"], mesh["fsdp_mesh"]["shape"]) == fsdp_mesh
    dp_size = views[0]
    # cp / tp / pp peers read the same data: their data-parallel rank is the same
    assert mesh["dp_rank_and_size"] == [rank if dp_size == 2 else 0, dp_size]
    assert mesh["dp_ranks"] == ([0, 1] if dp_size == 2 else [rank])
    assert mesh["dp_cp_ranks"] == ([0, 1] if views[2] == 2 else [rank])


@pytest.mark.parametrize("rank", [0, 1])
def test_expert_parallel_views(results, rank) -> None:
    """ep_size 2 on 2 dp ranks: both ranks share the experts out, none holds a replica."""
    assert results[rank]["mesh"]["ep2"] == {"ep": [0, 1], "ep_replicas": [rank]}
    # dp 1 × cp 2: the ep group is the cp ranks of the one dp rank
    assert results[rank]["mesh"]["ep2_cp2"] == {"ep": [0, 1], "ep_replicas": [rank]}


def test_mesh_errors_show_the_arithmetic(results) -> None:
    mesh = results[0]["mesh"]
    assert mesh["error_dp3"].startswith(
        "pp_size 1 × dp_size 3 × cp_size 1 × tp_size 1 = 3, but the world size is 2 "
        "(processes launched)"
    )
    assert "tp_size 3 = 3 does not divide the world size 2" in mesh["error_auto"]
    assert "world_size=4 was asked for, but the process group has 2" in mesh["error_world"]


# ------------------------------------------------------------------------ reductions


@pytest.mark.parametrize("rank", [0, 1])
def test_reduction_helpers(results, rank: int) -> None:
    reduce = results[rank]["reduce"]
    assert reduce["sum_int"] == 3 and reduce["sum_int_type"] == "int"
    assert reduce["sum_float"] == 1.5
    assert reduce["sum_tensor"] == [1.0, 2.0] and reduce["sum_tensor_input_unchanged"]
    assert reduce["mean_int"] == 0.5 and reduce["mean_tensor"] == 0.5
    assert reduce["global_tokens_int"] == 7 and reduce["global_tokens_tensor"] == 7
    assert reduce["sum_one_rank_group"] == rank + 1  # a one-rank group: unchanged
    assert reduce["is_main"] == (rank == 0)
    assert reduce["main_first_saw_marker"]  # rank 1 ran its block after rank 0's


# -------------------------------------------------------------------------- training


def test_blocks_found_in_a_hugging_face_llama(results) -> None:
    assert results[0]["training"]["blocks"] == ["LlamaDecoderLayer"] * 2


def test_fsdp2_keeps_a_head_tied_across_blocks(results) -> None:
    infos = [results[rank]["training"]["tied_across_blocks"] for rank in (0, 1)]
    assert all("error" not in info for info in infos), infos
    assert all(info["tied"] and info["grad"] for info in infos)
    assert infos[0]["loss"] == infos[1]["loss"]


@pytest.mark.parametrize("run", [*FP32_RUNS, *NO_SYNC_RUNS, "fsdp2_bf16"])
def test_run_completed_on_both_ranks(results, run: str) -> None:
    for rank in (0, 1):
        info = results[rank]["training"][run]
        assert "error" not in info, info.get("error")
    assert results[0]["training"][run]["losses"] == results[1]["training"][run]["losses"]


@pytest.mark.parametrize("run", FP32_RUNS)
def test_matches_one_process_exactly(results, run: str) -> None:
    info = results[0]["training"][run]
    halves = info["vs_halves"]
    assert halves["names_equal"]
    assert halves["loss_max_rel"] <= 1e-7, halves
    assert halves["weight_max_abs"] <= 1e-7, halves
    full = info["vs_full_batch"]
    assert full["loss_max_rel"] <= LOSS_RTOL, full
    assert full["weight_max_abs"] <= WEIGHT_ATOL, full
    bound = results[0]["training"]["halves_vs_full_batch"]["weight_max_abs"]
    assert full["weight_max_abs"] <= bound * 1.01 + 1e-7, (full, bound)


@pytest.mark.parametrize("run", NO_SYNC_RUNS)
def test_accumulation_under_no_sync_matches_one_process(results, run: str) -> None:
    """One row per micro-batch, gradients reduced once per step: same training, to float32."""
    info = results[0]["training"][run]
    full = info["vs_full_batch"]
    assert full["names_equal"]
    assert full["loss_max_rel"] <= LOSS_RTOL, full
    assert full["weight_max_abs"] <= WEIGHT_ATOL, full
    steps = len(info["losses"])
    per_step, grads_after_first = info["reductions"][:steps], info["reductions"][steps:]
    if run.startswith("ddp"):  # the tiny model fits one 25 MiB bucket: one all-reduce per step
        assert per_step == [1] * steps
        assert results[0]["training"]["ddp"]["reductions"] == [1] * steps  # one micro-batch
    else:  # FSDP2 reduce-scatters only after the last micro-batch
        assert grads_after_first == [False] * steps


def test_float32_bound_is_small(results) -> None:
    bound = results[0]["training"]["halves_vs_full_batch"]
    assert bound["loss_max_rel"] <= LOSS_RTOL and bound["weight_max_abs"] <= WEIGHT_ATOL


def test_sharding_and_wrapping(results) -> None:
    training = results[0]["training"]
    for run in ("fsdp2", "fsdp2_ac", "fsdp2_frozen", "fsdp2_cpu_offload"):
        assert training[run]["type"] == "FSDPLlamaForCausalLM"
        assert training[run]["block_type"] == "FSDPLlamaDecoderLayer"
        assert training[run]["placements"] == ["S(0)"]
    assert training["hsdp"]["placements"] == ["R", "S(0)"]  # replicate × shard
    for run in ("ddp", "ddp_ac", "ddp_frozen"):
        assert training[run]["type"] == "DistributedDataParallel"


def test_activation_checkpointing_gives_the_same_losses(results) -> None:
    training = results[0]["training"]
    assert training["fsdp2_ac"]["losses"] == training["fsdp2"]["losses"]
    assert training["ddp_ac"]["losses"] == training["ddp"]["losses"]


def test_frozen_parameters_train_only_the_trainable_ones(results) -> None:
    training = results[0]["training"]
    # the reference froze the same parameters: matching it means frozen ones stayed put
    assert training["fsdp2_frozen"]["vs_halves"]["weight_max_abs"] == 0.0
    assert training["fsdp2_frozen"]["losses"] != training["fsdp2"]["losses"]


def test_bf16_mixed_precision_stays_close(results) -> None:
    info = results[0]["training"]["fsdp2_bf16"]
    assert info["vs_full_batch"]["loss_max_rel"] <= 5e-3, info["vs_full_batch"]
    assert info["losses"] != results[0]["training"]["fsdp2"]["losses"]  # bf16 did apply


# ------------------------------------------------------------- single-process checks


def test_build_strategy_by_name() -> None:
    assert isinstance(build_strategy("fsdp2"), FSDP2Strategy)
    assert isinstance(build_strategy("ddp", bucket_cap_mb=10), DDPStrategy)
    assert isinstance(build_strategy("none"), NoStrategy)
    for name in ("fsdp2", "ddp", "none"):
        assert isinstance(build_strategy(name), Strategy)
    fsdp = build_strategy("fsdp2", mp_param_dtype="bfloat16", mp_reduce_dtype="torch.float32")
    assert fsdp.mp_policy().param_dtype is torch.bfloat16
    assert fsdp.mp_policy().reduce_dtype is torch.float32


def test_build_strategy_errors() -> None:
    with pytest.raises(
        ValueError, match=r"unknown distributed strategy 'fsdp'; valid .*fsdp2, ddp, none"
    ):
        build_strategy("fsdp")
    with pytest.raises(
        TypeError, match=r"'ddp' has no option\(s\) reshard_after_forward; its options: find_unused"
    ):
        build_strategy("ddp", reshard_after_forward=True)
    with pytest.raises(ValueError, match="mp_param_dtype='fp8' is not an accepted dtype"):
        FSDP2Strategy(mp_param_dtype="fp8")


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])


class Tower(nn.Module):
    def __init__(self, names: list[str] | None = None) -> None:
        super().__init__()
        if names is not None:
            self._no_split_modules = names
        self.embed = nn.Embedding(8, 4)
        self.layers = nn.ModuleList([Block(), Block(), Block()])
        self.mixed = nn.ModuleList([nn.Linear(4, 4), nn.ReLU()])  # not repeated blocks


def test_decoder_blocks_from_no_split_modules_or_module_lists() -> None:
    model = Tower(["Block"])
    assert decoder_blocks(model) == list(model.layers)
    model = Tower()  # no HF hint: children of module lists of one class, outermost only
    assert decoder_blocks(model) == list(model.layers)
    assert decoder_blocks(nn.Linear(2, 2)) == []


def test_helpers_without_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not torch.distributed.is_initialized()
    env = init_distributed()
    assert (env.rank, env.local_rank, env.world_size, env.backend, env.is_main) == (
        0,
        0,
        1,
        None,
        True,
    )
    assert not torch.distributed.is_initialized()  # no process group for one process
    assert all_reduce_sum(3) == 3 and all_reduce_sum(2.5) == 2.5
    tensor = torch.ones(2)
    assert all_reduce_sum(tensor) is tensor
    assert all_reduce_mean(3) == 3.0 and isinstance(all_reduce_mean(3), float)
    assert global_label_tokens(11) == 11
    assert dp_rank_and_size(None) == (0, 1)
    assert is_main_process() and is_main_process(local=True)
    barrier()
    with main_process_first():
        pass
    destroy_distributed()  # nothing to destroy: a no-op
    with pytest.raises(ValueError, match="unknown backend 'mpi2'"):
        init_distributed("mpi2")


def test_no_strategy_returns_the_model() -> None:
    model = Tower()
    assert NoStrategy().parallelize(model) is model
