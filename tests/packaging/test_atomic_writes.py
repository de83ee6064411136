"""One atomic write per package (checkpoint, core, peft), all with the same guarantees, and one
way to publish a folder (checkpoint's publish_folder, used by the recipes' merged model too).

The layering forbids a shared import between component packages, so each keeps a small copy;
these tests run every copy through the same cases, so the copies cannot drift apart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from automodel.checkpoint import publish_folder
from automodel.checkpoint._atomic import atomic_write, is_temp_path
from automodel.core._atomic import write_atomic as core_write_atomic
from automodel.peft._atomic import write_atomic as peft_write_atomic

WRITERS = {"checkpoint": atomic_write, "core": core_write_atomic, "peft": peft_write_atomic}


@pytest.fixture
def fsynced(monkeypatch) -> list[Path]:
    """The real paths os.fsync was called on, in order."""
    calls: list[Path] = []
    real = os.fsync

    def record(fd: int) -> None:
        calls.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return calls


@pytest.mark.parametrize("package", WRITERS)
def test_the_file_and_its_folder_are_fsynced_and_no_temporary_is_left(
    package: str, tmp_path: Path, fsynced: list[Path]
) -> None:
    target = tmp_path / "adapter_config.json"
    target.write_text("old")
    temps: list[Path] = []

    def write(tmp: Path) -> None:
        temps.append(tmp)
        assert target.read_text() == "old"  # the final name keeps the old content meanwhile
        tmp.write_text("new")

    assert WRITERS[package](target, write) == target
    assert target.read_text() == "new"
    (tmp,) = temps
    assert tmp.parent == tmp_path and is_temp_path(tmp)  # the checkpoint cleanup's pattern
    assert fsynced == [tmp, tmp_path]  # the data before the rename, the folder after it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json"]


@pytest.mark.parametrize("package", WRITERS)
def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(
    package: str, tmp_path: Path
) -> None:
    target = tmp_path / "config.yaml"
    target.write_text("old")

    def fail_halfway(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        WRITERS[package](target, fail_halfway)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_the_writers_are_used_where_their_packages_write(tmp_path: Path, fsynced) -> None:
    """core's save_config and peft's save_adapter go through their package's writer."""
    import torch

    from automodel.core.config import ConfigNode, save_config
    from automodel.peft import LoraConfig, apply_lora, save_adapter

    save_config(ConfigNode({"optimizer": {"lr": 1e-4}}), tmp_path / "cfg" / "config.yaml")
    temp = tmp_path / "cfg" / f".config.yaml.tmp-{os.getpid()}"
    assert fsynced[-2:] == [temp, tmp_path / "cfg"]
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    apply_lora(model, LoraConfig(target_modules=["0"], dim=2))
    fsynced.clear()
    save_adapter(model, tmp_path / "adapter")
    synced_files = {p.name for p in fsynced}
    assert {f".adapter_model.safetensors.tmp-{os.getpid()}", "adapter"} <= synced_files


def test_publishing_a_folder_replaces_the_old_one_only_once_the_new_one_is_complete(
    tmp_path: Path, monkeypatch
) -> None:
    final, staging = tmp_path / "merged_model", tmp_path / ".staging-merged_model"
    final.mkdir()
    (final / "model.safetensors").write_text("old")
    staging.mkdir()
    (staging / "model.safetensors").write_text("new")
    assert publish_folder(staging, final) == final
    assert (final / "model.safetensors").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["merged_model"]  # old one gone, no staging

    # Killed between the two renames: the earlier folder survives (hidden), never neither.
    staging.mkdir()
    (staging / "model.safetensors").write_text("newer")
    real_replace = os.replace
    moves: list[tuple[str, str]] = []

    def killed_at_second(src: str | Path, dst: str | Path) -> None:
        moves.append((Path(src).name, Path(dst).name))
        if len(moves) == 2:
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_second)
    with pytest.raises(KeyboardInterrupt):
        publish_folder(staging, final)
    kept = [p for p in tmp_path.iterdir() if (p / "model.safetensors").is_file()]
    assert {(p / "model.safetensors").read_text() for p in kept} == {"new", "newer"}
