"""Checkpoint directory names, the layout helper and size parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from automodel.checkpoint import (
    CONFIG_FILE,
    LATEST_FILE,
    MODEL_DIR,
    OPTIM_DIR,
    TRAIN_STATE_DIR,
    CheckpointLayout,
    checkpoint_dir_name,
    parse_checkpoint_dir_name,
    parse_size,
)


def test_checkpoint_dir_name_round_trips() -> None:
    assert checkpoint_dir_name(0, 0) == "epoch_0_step_0"
    assert checkpoint_dir_name(3, 1500) == "epoch_3_step_1500"
    assert parse_checkpoint_dir_name("epoch_3_step_1500") == (3, 1500)
    for bad in ("epoch_3_step_", "epoch_x_step_1", "epoch_1_step_2.tmp", LATEST_FILE):
        assert parse_checkpoint_dir_name(bad) is None


@pytest.mark.parametrize("epoch, step", [(-1, 0), (0, -5), (1.0, 2), (True, 1)])
def test_checkpoint_dir_name_rejects_bad_numbers(epoch: object, step: object) -> None:
    with pytest.raises(ValueError):
        checkpoint_dir_name(epoch, step)  # type: ignore[arg-type]


def test_layout_paths(tmp_path: Path) -> None:
    layout = CheckpointLayout.for_step(tmp_path, 2, 40)
    assert layout.path == tmp_path / "epoch_2_step_40"
    assert layout.epoch_step == (2, 40)
    assert layout.model_dir == layout.path / "model" == layout.path / MODEL_DIR
    assert layout.optim_dir == layout.path / "optim" == layout.path / OPTIM_DIR
    assert layout.train_state_dir == layout.path / "train_state" == layout.path / TRAIN_STATE_DIR
    assert layout.config_path == layout.path / "config.yaml" == layout.path / CONFIG_FILE
    assert LATEST_FILE == "LATEST"
    assert not tmp_path.joinpath("epoch_2_step_40").exists()  # describing does not create


@pytest.mark.parametrize(
    "text, expected",
    [
        (123, 123),
        ("123", 123),
        ("5GB", 5 * 10**9),
        ("500MB", 500 * 10**6),
        ("20KB", 20_000),
        ("20kb", 20_000),
        ("1.5GB", 1_500_000_000),
        ("2GiB", 2 * 2**30),
        ("10 MiB", 10 * 2**20),
        ("64B", 64),
    ],
)
def test_parse_size(text: int | str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "GB", "5XB", "-1GB", "0", 0, -3, "1e9"])
def test_parse_size_rejects(bad: int | str) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize("bad", [True, 1.5, None])
def test_parse_size_rejects_types(bad: object) -> None:
    with pytest.raises(TypeError):
        parse_size(bad)  # type: ignore[arg-type]
