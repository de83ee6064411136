"""save_consolidated / load_consolidated: Hugging Face layout that transformers loads as is."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from automodel.checkpoint import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    CheckpointError,
    load_consolidated,
    save_consolidated,
)

transformers = pytest.importorskip("transformers")

INPUT_IDS = torch.tensor([[1, 5, 17, 42, 99, 3, 64, 127], [0, 2, 4, 8, 16, 32, 64, 126]])


def perturbed_llama(
    build: Callable[..., torch.nn.Module], tie: bool, dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """The conftest's tiny Llama (seed 0), with every tensor (norms too) moved off its init."""
    model = build(0, tie=tie, dtype=dtype).eval()
    assert isinstance(model, transformers.LlamaForCausalLM)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def save_like_recipe(model: torch.nn.Module, out: Path, **kwargs) -> list[Path]:
    """Weights via save_consolidated; config files as the recipe writes them."""
    files = save_consolidated(model.state_dict(), out, **kwargs)
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    return files


def load_with_transformers(out: Path, dtype: torch.dtype) -> torch.nn.Module:
    """from_pretrained, asserting nothing was missing, unexpected or re-initialised."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, output_loading_info=True, dtype=dtype
    )
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    assert not info.get("error_msgs"), info
    return model.eval()


def assert_same_model(original: torch.nn.Module, loaded: torch.nn.Module) -> None:
    """Same weights (ties included) and bit-identical logits."""
    ref = original.state_dict()
    got = loaded.state_dict()
    assert ref.keys() == got.keys()
    for name, tensor in ref.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name
    with torch.no_grad():
        assert torch.equal(original(INPUT_IDS).logits, loaded(INPUT_IDS).logits)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_single_file_loads_in_transformers(tmp_path: Path, tie: bool, tiny_llama) -> None:
    model = perturbed_llama(tiny_llama, tie)
    files = save_like_recipe(model, tmp_path)

    assert files == [tmp_path / SAFE_WEIGHTS_NAME]
    assert not (tmp_path / SAFE_WEIGHTS_INDEX_NAME).exists()
    loaded = load_with_transformers(tmp_path, torch.float32)
    assert_same_model(model, loaded)
    tied = loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert tied == tie


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_tied_weights_are_saved_once(tmp_path: Path, tie: bool, tiny_llama) -> None:
    model = perturbed_llama(tiny_llama, tie)
    save_consolidated(model.state_dict(), tmp_path)

    with safe_open(tmp_path / SAFE_WEIGHTS_NAME, framework="pt") as f:
        names = set(f.keys())
        assert f.metadata()["format"] == "pt"
    assert "model.embed_tokens.weight" in names
    assert ("lm_head.weight" in names) is not tie
    assert names | ({"lm_head.weight"} if tie else set()) == set(model.state_dict())


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_sharded_loads_in_transformers(tmp_path: Path, tie: bool, tiny_llama) -> None:
    model = perturbed_llama(tiny_llama, tie)
    files = save_like_recipe(model, tmp_path, max_shard_size="20KB")

    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2
    assert files == [*shards, tmp_path / SAFE_WEIGHTS_INDEX_NAME]
    assert [p.name for p in shards][
        -1
    ] == f"model-{len(shards):05d}-of-{len(shards):05d}.safetensors"
    assert not (tmp_path / SAFE_WEIGHTS_NAME).exists()
    for shard in shards:  # no shard above the limit unless a single tensor is
        with safe_open(shard, framework="pt") as f:
            sizes = [f.get_slice(n).get_shape() for n in f.keys()]  # noqa: SIM118
            assert f.metadata()["format"] == "pt"
        nbytes = sum(4 * torch.Size(s).numel() for s in sizes)
        assert nbytes <= 20_000 or len(sizes) == 1

    index = json.loads((tmp_path / SAFE_WEIGHTS_INDEX_NAME).read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    on_disk = load_consolidated(tmp_path)
    assert set(index["weight_map"]) == set(on_disk)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in on_disk.values())

    assert_same_model(model, load_with_transformers(tmp_path, torch.float32))


@pytest.mark.parametrize("max_shard_size", ["5GB", "30KB"], ids=["single", "sharded"])
def test_bf16_model(tmp_path: Path, max_shard_size: str, tiny_llama) -> None:
    model = perturbed_llama(tiny_llama, tie=True, dtype=torch.bfloat16)
    save_like_recipe(model, tmp_path, max_shard_size=max_shard_size)

    assert (tmp_path / SAFE_WEIGHTS_INDEX_NAME).exists() == (max_shard_size != "5GB")
    assert all(t.dtype == torch.bfloat16 for t in load_consolidated(tmp_path).values())
    assert_same_model(model, load_with_transformers(tmp_path, torch.bfloat16))


@pytest.mark.parametrize("max_shard_size", ["5GB", 700], ids=["single", "sharded"])
def test_round_trip(tmp_path: Path, max_shard_size: str | int) -> None:
    sd = {
        "b": torch.randn(10, 10),
        "a": torch.arange(24, dtype=torch.int64).reshape(2, 3, 4),
        "half": torch.randn(7).half(),
        "flag": torch.tensor([True, False]),
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(3.5),
    }
    save_consolidated(sd, tmp_path, max_shard_size=max_shard_size)
    loaded = load_consolidated(tmp_path)
    assert loaded.keys() == sd.keys()
    for name, tensor in sd.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name


def test_non_contiguous_and_overlapping_views(tmp_path: Path) -> None:
    fused = torch.randn(6, 4)
    sd = {
        "transposed": torch.randn(3, 5).t(),  # non-contiguous
        "q": fused[:2],  # three slices of one storage: safetensors refuses shared memory
        "k": fused[2:4],
        "v": fused[4:],
        "strided": fused[:, ::2],
    }
    save_consolidated(sd, tmp_path)
    loaded = load_consolidated(tmp_path)
    for name, tensor in sd.items():
        assert torch.equal(loaded[name], tensor), name
    assert torch.equal(fused, torch.cat([sd["q"], sd["k"], sd["v"]]))  # input untouched


def test_same_storage_different_dtype_view_is_not_dropped(tmp_path: Path) -> None:
    base = torch.randn(4, 4)
    sd = {"w": base, "w_t": base.t(), "w_again": base}
    save_consolidated(sd, tmp_path)
    loaded = load_consolidated(tmp_path)
    assert set(loaded) == {"w", "w_t"}  # exact alias dropped, different view kept
    assert torch.equal(loaded["w_t"], base.t())


def test_metadata_in_header(tmp_path: Path) -> None:
    save_consolidated({"x": torch.ones(2)}, tmp_path, metadata={"step": "7", "format": "np"})
    with safe_open(tmp_path / SAFE_WEIGHTS_NAME, framework="pt") as f:
        assert f.metadata() == {"step": "7", "format": "pt"}
    with pytest.raises(TypeError, match="str to str"):
        save_consolidated({"x": torch.ones(2)}, tmp_path, metadata={"step": 7})  # type: ignore[dict-item]


def test_resave_replaces_other_layout_and_leaves_no_temp_files(tmp_path: Path) -> None:
    sd = {f"w{i}": torch.full((64,), float(i)) for i in range(8)}
    save_consolidated(sd, tmp_path, max_shard_size=600)
    assert (tmp_path / SAFE_WEIGHTS_INDEX_NAME).exists()
    (tmp_path / "config.json").write_text("{}")

    save_consolidated(sd, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", SAFE_WEIGHTS_NAME]

    save_consolidated(sd, tmp_path, max_shard_size=1000)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "config.json",
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        SAFE_WEIGHTS_INDEX_NAME,
    ]
    assert all(torch.equal(load_consolidated(tmp_path)[k], v) for k, v in sd.items())


def test_write_false_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "model"
    files = save_consolidated({"x": torch.ones(2)}, out, write=False)
    assert files == [out / SAFE_WEIGHTS_NAME]
    assert not out.exists()


def test_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="'x'"):
        save_consolidated({"x": [1, 2]}, tmp_path)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="size"):
        save_consolidated({"x": torch.ones(2)}, tmp_path, max_shard_size="5 parsecs")
    with pytest.raises(CheckpointError, match="meta"):
        save_consolidated({"x": torch.empty(2, device="meta")}, tmp_path)


# ---------------------------------------------------------------------------- DTensor


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_fsdp2_state_dict_of_dtensors(
    tmp_path: Path, single_rank_group: None, tie: bool, tiny_llama
) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = perturbed_llama(tiny_llama, tie)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    mesh = init_device_mesh("cpu", (1,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sd = model.state_dict()
    assert all(callable(getattr(t, "full_tensor", None)) for t in sd.values())

    assert save_consolidated(sd, tmp_path / "skip", write=False) == [
        tmp_path / "skip" / SAFE_WEIGHTS_NAME
    ]
    assert not (tmp_path / "skip").exists()

    out = tmp_path / "model"
    save_consolidated(sd, out, max_shard_size="20KB")  # write=None: rank 0 writes
    model.config.save_pretrained(out)
    on_disk = load_consolidated(out)
    assert set(on_disk) == set(reference) - ({"lm_head.weight"} if tie else set())
    assert all(torch.equal(on_disk[k], reference[k]) for k in on_disk)

    loaded = load_with_transformers(out, torch.float32)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in reference.items())


# ------------------------------------------------------------------------ corrupt files


def _save_sharded(out: Path) -> list[Path]:
    sd = {f"w{i}": torch.randn(100) for i in range(6)}
    return save_consolidated(sd, out, max_shard_size=900)


def test_truncated_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    save_consolidated({"x": torch.randn(100, 100)}, tmp_path)
    path = tmp_path / SAFE_WEIGHTS_NAME
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, 4, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="corrupt") as exc:
            load_consolidated(tmp_path)
        assert str(path) in str(exc.value)


def test_garbage_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / SAFE_WEIGHTS_NAME
    path.write_bytes(b"this is not a safetensors file at all" * 10)
    with pytest.raises(CheckpointError, match="corrupt") as exc:
        load_consolidated(tmp_path)
    assert str(path) in str(exc.value)


def test_corrupt_shard_is_named(tmp_path: Path) -> None:
    files = _save_sharded(tmp_path)
    files[1].write_bytes(files[1].read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="corrupt") as exc:
        load_consolidated(tmp_path)
    assert files[1].name in str(exc.value)


def test_missing_shard_is_named(tmp_path: Path) -> None:
    files = _save_sharded(tmp_path)
    files[1].unlink()
    with pytest.raises(CheckpointError, match="missing") as exc:
        load_consolidated(tmp_path)
    assert files[1].name in str(exc.value)


def test_corrupt_index(tmp_path: Path) -> None:
    _save_sharded(tmp_path)
    index = tmp_path / SAFE_WEIGHTS_INDEX_NAME
    index.write_text('{"weight_map": ')
    with pytest.raises(CheckpointError, match="corrupt") as exc:
        load_consolidated(tmp_path)
    assert SAFE_WEIGHTS_INDEX_NAME in str(exc.value)
    index.write_text(json.dumps({"weight_map": {"w0": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside"):
        load_consolidated(tmp_path)


def test_index_names_tensor_not_in_shard(tmp_path: Path) -> None:
    files = _save_sharded(tmp_path)
    index_path = files[-1]
    index = json.loads(index_path.read_text())
    index["weight_map"]["ghost"] = files[0].name
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="ghost"):
        load_consolidated(tmp_path)


def test_no_weights(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no consolidated weights"):
        load_consolidated(tmp_path)
