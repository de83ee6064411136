"""Checkpointer save/restore in one process: exact resume, ties, clear errors for bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from automodel.checkpoint import (
    MANIFEST_FILE,
    SAFE_WEIGHTS_NAME,
    Checkpointer,
    CheckpointError,
    read_checkpoint_info,
)


def test_round_trip_is_bitwise_and_training_continues_identically(
    tmp_path: Path, make_run, assert_same
) -> None:
    run = make_run(0, tie=False)
    run.step()
    run.step()
    ckpt = Checkpointer(tmp_path)

    def extras(staging: Path) -> None:
        run.model.config.save_pretrained(staging / "model")
        (staging / "config.yaml").write_text("lr: 0.01\n")

    path = ckpt.save(1, 2, write_extras=extras, **run.states())
    saved = run.snapshot()
    expected_losses = [run.step(), run.step()]

    assert path == tmp_path / "epoch_1_step_2"
    assert ckpt.latest() == path and ckpt.checkpoints() == [path]
    assert (tmp_path / "LATEST").read_text().strip() == path.name
    info = read_checkpoint_info(path)
    assert (info.epoch, info.step, info.world_size, info.format_version) == (1, 2, 1, 1)
    assert info.parts == ("model", "optimizer", "optim_states", "train_states")
    assert info.optim_states == ("lr_scheduler",)
    assert info.train_states == ("progress", "rng")
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert on_disk == set(info.files) | {MANIFEST_FILE}
    assert {"model/config.json", "config.yaml", "train_state/rank_00000.pt"} <= on_disk
    assert all(info.files[f] == (path / f).stat().st_size for f in info.files)

    resumed = make_run(1, tie=False)
    got = ckpt.restore(path, **resumed.states())
    assert got == info
    assert_same(saved, resumed.snapshot())
    assert [resumed.step(), resumed.step()] == expected_losses
    assert_same(run.snapshot(), resumed.snapshot())


def test_restore_in_two_calls_weights_first_then_the_rest(tmp_path: Path, make_run) -> None:
    """As a recipe does: weights before freezing/sharding, optimizer once it exists."""
    run = make_run(0, tie=False)
    run.step()
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(0, 1, **run.states())
    saved = run.snapshot()

    resumed = make_run(1, tie=False)
    ckpt.restore(path, model=resumed.model)
    weights = {k: v.clone() for k, v in resumed.model.state_dict().items()}
    with torch.no_grad():
        next(resumed.model.parameters()).add_(1.0)  # a change the second call must not undo
    states = resumed.states()
    ckpt.restore(path, load_weights=False, **states)
    first = next(iter(weights))
    assert torch.equal(resumed.model.state_dict()[first], weights[first] + 1.0)
    got = resumed.snapshot()
    for key, tensor in saved["optim"].items():
        assert torch.equal(got["optim"][key], tensor), key
    assert got["scheduler"] == saved["scheduler"]


def test_tied_weights_round_trip(tmp_path: Path, make_run) -> None:
    run = make_run(0, tie=True)
    run.step()
    path = Checkpointer(tmp_path).save(0, 1, model=run.model, optimizer=run.optimizer)
    with safe_open(path / "model" / SAFE_WEIGHTS_NAME, framework="pt") as f:
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names

    other = make_run(3, tie=True)
    Checkpointer(tmp_path).restore(path, model=other.model, optimizer=other.optimizer)
    assert other.model.lm_head.weight is other.model.model.embed_tokens.weight
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[name], tensor), name
    ids = torch.arange(16).reshape(2, 8)
    with torch.no_grad():
        assert torch.equal(run.model(ids).logits, other.model(ids).logits)


def test_shape_mismatch_names_first_tensor_and_both_shapes(tmp_path: Path, make_run) -> None:
    path = Checkpointer(tmp_path).save(0, 1, model=make_run(0).model)
    wider = make_run(0, intermediate=48).model
    with pytest.raises(CheckpointError) as exc:
        Checkpointer(tmp_path).restore(path, model=wider)
    message = str(exc.value)
    assert "'model.layers.0.mlp.gate_proj.weight'" in message
    assert "[64, 32]" in message and "[48, 32]" in message


def test_missing_and_unexpected_tensors_are_named(tmp_path: Path, make_run) -> None:
    path = Checkpointer(tmp_path).save(0, 1, model=make_run(0, layers=2).model)
    with pytest.raises(CheckpointError, match=r"missing 9 tensor\(s\).*model\.layers\.2\.") as exc:
        Checkpointer(tmp_path).restore(path, model=make_run(0, layers=3).model)
    assert "and 4 more" in str(exc.value)
    with pytest.raises(CheckpointError, match=r"9 unexpected tensor\(s\): model\.layers\.1\."):
        Checkpointer(tmp_path).restore(path, model=make_run(0, layers=1).model)


def test_missing_part_says_what_is_missing_and_what_is_there(tmp_path: Path, make_run) -> None:
    run = make_run(0)
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(0, 1, model=run.model, train_states={"progress": run.progress})
    with pytest.raises(CheckpointError) as exc:
        ckpt.restore(
            path,
            model=run.model,
            optimizer=run.optimizer,
            optim_states={"lr_scheduler": run.scheduler},
            train_states={"progress": run.progress, "rng": run.rng},
        )
    assert str(exc.value) == (
        f"checkpoint {path} has no optimizer, optim_states [lr_scheduler], train_states [rng]; "
        f"it has model, train_states [progress]"
    )
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        ckpt.restore(tmp_path / "epoch_0_step_7", model=run.model)


def test_truncated_safetensors_is_reported_as_corrupt(tmp_path: Path, make_run) -> None:
    run = make_run(0)
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(0, 1, model=run.model)
    weights = path / "model" / SAFE_WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as exc:
        ckpt.restore(path, model=run.model)
    assert str(exc.value) == (
        f"checkpoint {path} is corrupt or truncated: model/{SAFE_WEIGHTS_NAME} is "
        f"{len(data) // 2} bytes, manifest says {len(data)}"
    )

    # same size, broken header: the manifest check passes, the header check must not
    weights.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(CheckpointError, match="corrupt") as exc:
        ckpt.restore(path, model=run.model)
    assert str(weights) in str(exc.value)
    # same size, header cut short: a tensor would point past the end of the file
    header_len = int.from_bytes(data[:8], "little")
    weights.write_bytes((header_len + 200).to_bytes(8, "little") + data[8:])
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.restore(path, model=run.model)


def test_manifest_size_mismatch_of_any_file_is_corrupt(tmp_path: Path, make_run) -> None:
    run = make_run(0)
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(0, 1, **run.states())
    state_file = path / "train_state" / "rank_00000.pt"
    size = state_file.stat().st_size
    with state_file.open("ab") as f:
        f.write(b"junk")
    with pytest.raises(
        CheckpointError, match=re.escape(f"rank_00000.pt is {size + 4} bytes, manifest says {size}")
    ):
        ckpt.restore(path, model=run.model)  # the whole checkpoint is checked, not only model/
    state_file.unlink()
    with pytest.raises(CheckpointError, match=r"rank_00000\.pt is missing"):
        ckpt.restore(path, **run.states())


def test_world_size_change_is_refused_for_train_states(tmp_path: Path, make_run) -> None:
    run = make_run(0)
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(0, 1, **run.states())
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["world_size"] = 4
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"saved by 4 rank.*this run has 1"):
        ckpt.restore(path, train_states={"rng": run.rng})
    ckpt.restore(path, model=run.model, optimizer=run.optimizer)  # consolidated / DCP: fine
    ckpt.restore(path, train_states={"rng": run.rng}, allow_world_size_change=True)  # rank 0 % 4


class Opaque:
    """Picklable, but not something torch.load(weights_only=True) accepts."""


class BadState:
    def __init__(self, value: object) -> None:
        self.value = value

    def state_dict(self) -> dict[str, object]:
        return {"thing": self.value}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.value = state["thing"]


def test_state_that_weights_only_cannot_load_fails_at_save(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(
        CheckpointError, match=r"train_states\['bad'\].*weights_only=True\) refuses"
    ):
        ckpt.save(0, 1, train_states={"ok": BadState(1), "bad": BadState(Opaque())})
    with pytest.raises(CheckpointError, match=r"optim_states\['fn'\].*cannot be saved"):
        ckpt.save(0, 1, optim_states={"fn": BadState(lambda: 0)})
    assert ckpt.latest() is None and ckpt.checkpoints() == []
    with pytest.raises(TypeError, match="no state_dict"):
        ckpt.save(0, 1, train_states={"x": object()})
    with pytest.raises(ValueError, match="needs its model"):
        ckpt.save(0, 1, optimizer=torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0))
    with pytest.raises(ValueError, match="keep_last_n"):
        Checkpointer(tmp_path, keep_last_n=0)


def test_sharded_model_files(tmp_path: Path, make_run) -> None:
    run = make_run(0, tie=False)
    ckpt = Checkpointer(tmp_path, max_shard_size="20KB")
    path = ckpt.save(0, 1, model=run.model)
    assert len(list((path / "model").glob("model-*-of-*.safetensors"))) > 2
    other = make_run(5, tie=False)
    ckpt.restore(path, model=other.model)
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[name], tensor), name


def test_optimizer_saved_before_its_first_step(tmp_path: Path) -> None:
    def setup(lr: float):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
        return model, torch.optim.AdamW(model.parameters(), lr=lr)

    model, optimizer = setup(0.1)
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(0, 0, model=model, optimizer=optimizer)
    assert not optimizer.state  # saving did not initialise it (DCP would, with a fake step)

    other_model, other = setup(0.5)
    ckpt.restore(path, model=other_model, optimizer=other)
    assert not other.state and other.param_groups[0]["lr"] == 0.1
    for m, opt in ((model, optimizer), (other_model, other)):
        m(torch.ones(2, 4)).sum().backward()
        opt.step()
    pairs = zip(model.parameters(), other_model.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert other.state_dict()["state"][0]["step"] == 1


def test_parameters_that_never_got_a_gradient_stay_stateless(tmp_path: Path) -> None:
    def setup(lr: float):
        torch.manual_seed(0)
        model = torch.nn.ModuleDict(
            {"used": torch.nn.Linear(4, 1), "unused": torch.nn.Linear(4, 4)}
        )
        return model, torch.optim.AdamW(model.parameters(), lr=lr)

    def step(model, optimizer) -> None:
        model["used"](torch.ones(2, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model, optimizer = setup(0.1)
    step(model, optimizer)
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(0, 1, model=model, optimizer=optimizer)
    other_model, other = setup(0.5)
    ckpt.restore(path, model=other_model, optimizer=other)
    assert other.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys() == {0, 1}
    step(model, optimizer)
    step(other_model, other)
    for a, b in zip(model.parameters(), other_model.parameters(), strict=True):
        assert torch.equal(a, b)
