"""WeightsFormat(parts=...): a model made of models (a bi-encoder's two towers) saved as one
Hugging Face folder per part inside model/, each loadable on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from automodel.checkpoint import (
    MANIFEST_FILE,
    SAFE_WEIGHTS_NAME,
    Checkpointer,
    CheckpointError,
    WeightsFormat,
    read_checkpoint_info,
)

transformers = pytest.importorskip("transformers")
TOWERS = WeightsFormat(parts=("query", "passage"))


def towers(build, seed: int) -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict({"query": build(seed), "passage": build(seed + 1)})


def test_each_part_is_a_model_folder_and_restores_bitwise(tmp_path: Path, tiny_llama) -> None:
    model = towers(tiny_llama, 0)
    ckpt = Checkpointer(tmp_path, weights_format=TOWERS, max_shard_size="20KB")
    path = ckpt.save(0, 1, model=model)
    for part in TOWERS.parts:
        part_dir = path / "model" / part
        getattr(model, part).config.save_pretrained(part_dir)  # what write_extras adds
        loaded = transformers.AutoModelForCausalLM.from_pretrained(part_dir)
        for name, tensor in getattr(model, part).state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), (part, name)
    assert not (path / "model" / SAFE_WEIGHTS_NAME).exists()  # nothing outside the parts
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["weights_format"]["parts"] == ["query", "passage"]
    assert read_checkpoint_info(path).weights_format == TOWERS

    fresh = towers(tiny_llama, 5)
    ckpt.restore(path, model=fresh)
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name

    with pytest.raises(CheckpointError, match="one folder per part"):  # a one-folder run
        Checkpointer(tmp_path).restore(path, model=fresh)


def test_a_tensor_outside_every_part_is_refused(tmp_path: Path, tiny_llama) -> None:
    model = towers(tiny_llama, 0)
    model.add_module("head", torch.nn.Linear(2, 2))
    with pytest.raises(Exception, match="belong to none of the parts"):
        Checkpointer(tmp_path, weights_format=TOWERS).save(0, 1, model=model)
    assert Checkpointer(tmp_path).latest() is None  # nothing published


@pytest.mark.parametrize("parts", [("a.b",), ("q", "q"), ["q"], ("",)])
def test_bad_parts(parts) -> None:
    with pytest.raises(ValueError, match="parts must be"):
        WeightsFormat(parts=parts)


def test_inspect_and_consolidate_a_checkpoint_of_parts(tmp_path: Path, tiny_llama) -> None:
    from automodel.checkpoint._tools import consolidate, inspect

    model = towers(tiny_llama, 0)
    path = Checkpointer(tmp_path / "ck", weights_format=TOWERS, max_shard_size="20KB").save(
        0, 1, model=model
    )
    report = inspect(str(path), tensors=True)
    assert report["problems"] == []
    names = {t["name"] for t in report["model"]["tensor_list"]}
    assert names == set(model.state_dict()) - {"query.lm_head.weight", "passage.lm_head.weight"}
    out = consolidate(str(path), str(tmp_path / "out"), "1GB")
    for part in TOWERS.parts:
        assert (out / part / SAFE_WEIGHTS_NAME).is_file()  # one file per part now
        assert not list((out / part).glob("model-0000*"))
