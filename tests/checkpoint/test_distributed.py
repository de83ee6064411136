"""Two processes (torchrun, gloo, FSDP2 on CPU): sync + async save, restore, per-rank train state.

One launch runs every multi-process check (see dist_worker.py); this process then reads the
2-rank checkpoint alone: model and optimizer reshard to one process, train state refuses to.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from automodel.checkpoint import (
    PEFT_ADAPTER,
    Checkpointer,
    CheckpointError,
    load_consolidated,
    read_checkpoint_info,
)

WORKER = Path(__file__).with_name("dist_worker.py")


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory, run_torchrun) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run_torchrun(WORKER, str(out))
    return out


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_restores_what_it_saved(two_rank_run: Path, rank: int) -> None:
    result = json.loads((two_rank_run / f"rank{rank}.json").read_text())
    assert result["sync_equal"], "sync checkpoint did not restore bitwise"
    assert result["async_equal"], "async checkpoint did not restore bitwise"
    assert result["reused_equal"], "async save into reused buffers did not restore bitwise"
    assert result["loss_equal"], "training after restore differs from the original run"
    assert result["scheduler_equal"] and result["lr_equal"]
    assert result["counter_sync"] == 100 + rank  # per-rank train state
    assert result["counter_async"] == 110 + rank  # snapshot taken before the later += 1000
    assert result["world_size_saved"] == 2
    assert result["latest"] == "epoch_0_step_4"
    assert result["checkpoints"] == ["epoch_0_step_3", "epoch_0_step_4"]  # keep_last_n=2
    assert "has no train_states [nope]" in result["missing_error"]
    assert result["adapter_trainable_equal"], "adapter did not restore bitwise"
    assert result["adapter_frozen_untouched"], "restoring the adapter changed frozen weights"
    assert result["adapter_optim_equal"], "optimizer over the trainable subset did not restore"
    assert result["adapter_empty_shard"] == (rank == 1)


def test_two_rank_checkpoint_layout(two_rank_run: Path) -> None:
    info = read_checkpoint_info(two_rank_run / "ckpt" / "epoch_0_step_3")
    assert info.world_size == 2
    assert {"train_state/rank_00000.pt", "train_state/rank_00001.pt"} <= info.files.keys()
    assert {"optim/optimizer/__0_0.distcp", "optim/optimizer/__1_0.distcp"} <= info.files.keys()
    assert {"model/model.safetensors", "model/config.json"} <= info.files.keys()
    assert not [p for p in (two_rank_run / "ckpt").iterdir() if p.name.startswith(".")]


def test_two_rank_adapter_checkpoint(two_rank_run: Path) -> None:
    sys.path.insert(0, str(WORKER.parent))
    try:
        from dist_worker import ADAPTER_TRAINABLE, AdapterLM
    finally:
        sys.path.remove(str(WORKER.parent))
    path = two_rank_run / "adapter" / "epoch_0_step_2"
    assert read_checkpoint_info(path).weights_format == PEFT_ADAPTER
    assert sorted(p.name for p in (path / "model").iterdir()) == ["adapter_model.safetensors"]
    on_disk = load_consolidated(path / "model", file_stem="adapter_model")
    assert set(on_disk) == {f"base_model.model.{name}" for name in ADAPTER_TRAINABLE}

    model = AdapterLM()  # one process, unsharded: the adapter reads back unchanged
    for name, param in model.named_parameters():
        param.requires_grad_(name in ADAPTER_TRAINABLE)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    Checkpointer(two_rank_run / "adapter", weights_format=PEFT_ADAPTER).restore(path, model=model)
    for name, param in model.named_parameters():
        expected = on_disk.get(f"base_model.model.{name}", frozen.get(name))
        assert torch.equal(param.detach(), expected), name


def test_single_process_reads_the_two_rank_checkpoint(two_rank_run: Path) -> None:
    sys.path.insert(0, str(WORKER.parent))
    try:
        from dist_worker import Counter, TinyLM
    finally:
        sys.path.remove(str(WORKER.parent))
    path = two_rank_run / "ckpt" / "epoch_0_step_3"
    ckpt = Checkpointer(two_rank_run / "ckpt")
    counter = Counter(0)
    with pytest.raises(CheckpointError, match=r"saved by 2 rank.*allow_world_size_change"):
        ckpt.restore(path, train_states={"counter": counter})
    ckpt.restore(path, train_states={"counter": counter}, allow_world_size_change=True)
    assert counter.value == 110  # rank 0 of 1 reads saved rank 0 % 2 (rank 1 saved 111)

    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    ckpt.restore(path, model=model, optimizer=optimizer)  # DCP reshards 2 ranks -> 1
    assert model.head.weight is model.embed.weight
    reference = torch.load(two_rank_run / "reference.pt", weights_only=True)
    state = optimizer.state_dict()
    names = [n for n, _ in model.named_parameters()]
    assert len(state["state"]) == len(names)
    for index, entries in state["state"].items():
        for key, tensor in entries.items():
            assert torch.equal(tensor, reference["optim"][f"state.{names[index]}.{key}"])
    assert state["param_groups"][0]["lr"] == reference["lr"]
