"""MeshConfig validation, size resolution and its error arithmetic; a one-process mesh.

The multi-process meshes (dp, HSDP, tp, cp, pp over 2 ranks) are checked in
test_data_parallel.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from automodel.distributed import (
    MESH_DIMS,
    FSDP2Strategy,
    MeshConfig,
    MeshError,
    build_mesh,
    destroy_distributed,
    dp_group,
    dp_rank_and_size,
    resolve_sizes,
    submesh,
)


def sizes(**kwargs: int) -> dict[str, int]:
    out = dict.fromkeys((*MESH_DIMS, "ep"), 1)
    out.update(kwargs)
    return out


@pytest.mark.parametrize(
    ("config", "world", "expected"),
    [
        (MeshConfig(), 1, sizes()),
        (MeshConfig(), 8, sizes(dp_shard=8)),
        (MeshConfig(tp_size=2), 8, sizes(dp_shard=4, tp=2)),
        (MeshConfig(tp_size=2, cp_size=2, pp_size=2), 16, sizes(pp=2, dp_shard=2, cp=2, tp=2)),
        (MeshConfig(dp_replicate_size=2), 8, sizes(dp_replicate=2, dp_shard=4)),
        (MeshConfig(dp_size=4, dp_replicate_size=4, pp_size=2), 8, sizes(pp=2, dp_replicate=4)),
        (MeshConfig(dp_size=2, tp_size=4), 8, sizes(dp_shard=2, tp=4)),
        (MeshConfig(ep_size=4, dp_replicate_size=2), 8, sizes(dp_replicate=2, dp_shard=4, ep=4)),
    ],
)
def test_resolve_sizes(config: MeshConfig, world: int, expected: dict[str, int]) -> None:
    resolved = resolve_sizes(config, world)
    assert resolved == expected
    assert list(resolved) == [*MESH_DIMS, "ep"]
    product = 1
    for name in MESH_DIMS:  # ep takes no processes of its own: it splits dp
        product *= resolved[name]
    assert product == world


def test_explicit_sizes_that_miss_the_world_size_show_the_arithmetic() -> None:
    with pytest.raises(MeshError) as info:
        resolve_sizes(MeshConfig(dp_size=3), 2)
    assert str(info.value).startswith(
        "pp_size 1 × dp_size 3 × cp_size 1 × tp_size 1 = 3, but the world size is 2 "
        "(processes launched); "
    )
    assert isinstance(info.value, ValueError)
    assert info.value.key is None  # the product, not one field, misses the world size
    with pytest.raises(
        MeshError,
        match=r"pp_size 2 × dp_size 2 × cp_size 1 × tp_size 4 = 16, but the world size is 8",
    ):
        resolve_sizes(MeshConfig(dp_size=2, tp_size=4, pp_size=2), 8)


def test_auto_dp_needs_a_divisible_world_size() -> None:
    with pytest.raises(
        MeshError, match=r"pp_size 1 × cp_size 1 × tp_size 3 = 3 does not divide the world size 8"
    ):
        resolve_sizes(MeshConfig(tp_size=3), 8)


def test_ep_must_divide_dp_times_cp() -> None:
    with pytest.raises(
        MeshError, match=r"ep_size 3 does not divide dp_size 4 × cp_size 1 = 4: .* multiple of 3"
    ) as e:
        resolve_sizes(MeshConfig(ep_size=3), 4)
    assert e.value.key == "ep_size"
    sizes = resolve_sizes(MeshConfig(ep_size=2, cp_size=2), 8)
    assert (sizes["dp_shard"], sizes["cp"], sizes["ep"]) == (4, 2, 2)
    # ep groups span the cp ranks too (NeMo AutoModel's layout): 4 = dp 2 × cp 2
    sizes = resolve_sizes(MeshConfig(ep_size=4, cp_size=2), 4)
    assert (sizes["dp_shard"], sizes["cp"], sizes["ep"]) == (2, 2, 4)
    with pytest.raises(MeshError, match=r"ep_size 8 does not divide dp_size 2 × cp_size 2 = 4"):
        resolve_sizes(MeshConfig(ep_size=8, cp_size=2), 4)


def test_dp_replicate_must_divide_dp() -> None:
    with pytest.raises(MeshError, match="dp_replicate_size 3 does not divide dp_size 4") as e:
        resolve_sizes(MeshConfig(dp_replicate_size=3), 4)
    assert e.value.key == "dp_replicate_size"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dp_size": 0}, "dp_size must be a positive integer or 'auto', got 0"),
        ({"dp_size": "all"}, "dp_size must be a positive integer or 'auto', got 'all'"),
        ({"tp_size": -1}, "tp_size must be a positive integer, got -1"),
        ({"cp_size": 1.5}, "cp_size must be a positive integer, got 1.5"),
        ({"pp_size": True}, "pp_size must be a positive integer, got True"),
        ({"dp_replicate_size": 0}, "dp_replicate_size must be a positive integer, got 0"),
        ({"ep_size": 0}, "ep_size must be a positive integer, got 0"),
    ],
)
def test_mesh_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(MeshError) as info:
        MeshConfig(**kwargs)
    assert str(info.value) == message
    assert info.value.key == next(iter(kwargs))


def test_world_size_must_be_positive() -> None:
    with pytest.raises(MeshError, match="world_size must be a positive integer, got 0") as e:
        resolve_sizes(MeshConfig(), 0)
    assert e.value.key is None  # the processes launched, not a config field


def test_a_multi_process_mesh_needs_a_process_group() -> None:
    if torch.distributed.is_initialized():
        pytest.skip("a process group is already running in this process")
    with pytest.raises(MeshError, match="needs an initialised process group: launch with torchrun"):
        build_mesh(world_size=2, device_type="cpu")


def test_one_process_mesh_and_fsdp2() -> None:
    """Without torchrun, build_mesh makes a one-process group so FSDP2 also runs alone."""
    if torch.distributed.is_initialized():
        pytest.skip("a process group is already running in this process")
    try:
        mesh = build_mesh(MeshConfig(), device_type="cpu")
        assert mesh.mesh_dim_names == MESH_DIMS
        assert mesh.shape == (1, 1, 1, 1, 1)
        assert {name: submesh(mesh, name).size() for name in ("dp", "dp_shard_cp", "dp_cp")} == {
            "dp": 1,
            "dp_shard_cp": 1,
            "dp_cp": 1,
        }
        assert dp_rank_and_size(mesh) == (0, 1)
        assert torch.distributed.get_world_size(dp_group(mesh)) == 1
        with pytest.raises(KeyError, match="no dimension 'ep'"):
            submesh(mesh, "ep")

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        reference = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        reference.load_state_dict(model.state_dict())
        model = FSDP2Strategy().parallelize(model, mesh)
        x = torch.randn(3, 4)
        assert torch.equal(model(x), reference(x))
        del model, mesh
    finally:
        destroy_distributed()
    assert not torch.distributed.is_initialized()


def test_a_mesh_over_some_of_the_processes(single_rank_group) -> None:
    """`ranks`: the mesh spans those global ranks (here the one process); its flattened views
    are its plain dimensions, so layouts that need a flattened group are refused by key."""
    mesh = build_mesh(MeshConfig(), device_type="cpu", ranks=range(1))
    assert mesh.mesh.flatten().tolist() == [0] and mesh.get_coordinate() == (0, 0, 0, 0, 0)
    assert dp_rank_and_size(mesh) == (0, 1)
    assert torch.distributed.get_world_size(dp_group(mesh, include_cp=True)) == 1
    with pytest.raises(MeshError, match="distinct global ranks of the 1 processes, got \\[1\\]"):
        build_mesh(ranks=[1])
    with pytest.raises(MeshError, match="world_size=2 was asked for, but ranks has 1"):
        build_mesh(world_size=2, ranks=[0])
    with pytest.raises(MeshError, match="pp_size 1 × dp_size 2") as e:
        build_mesh(MeshConfig(dp_size=2), ranks=[0])
    assert e.value.key is None
