"""PEFT_ADAPTER: only the trainable parameters, as the Hugging Face PEFT adapter file format.

The model is the conftest's tiny Llama with LoRA (and optionally DoRA) parameters added to
the attention projections under the names automodel.peft gives them (``lora_A.weight``,
``lora_B.weight``, ``lora_magnitude_vector``) and everything else frozen.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from automodel.checkpoint import (
    HF_WEIGHTS,
    MANIFEST_FILE,
    PEFT_ADAPTER,
    SAFE_WEIGHTS_NAME,
    Checkpointer,
    CheckpointError,
    WeightsFormat,
    load_consolidated,
    read_checkpoint_info,
    save_consolidated,
)
from automodel.checkpoint._layout import is_weight_file_name, shard_file_name
from automodel.checkpoint._tools import inspect, main

transformers = pytest.importorskip("transformers")

ADAPTER_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
TARGETS = ("q_proj", "v_proj")


class LoraLinear(torch.nn.Linear):
    """A Linear plus a low-rank update (and a DoRA-like magnitude), named as PEFT names them."""

    def __init__(self, base: torch.nn.Linear, rank: int, dora: bool) -> None:
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None)
        self.weight = base.weight
        self.bias = base.bias
        self.lora_A = torch.nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = torch.nn.Linear(rank, base.out_features, bias=False)
        self.dora = dora
        if dora:
            self.lora_magnitude_vector = torch.nn.Parameter(torch.rand(base.out_features) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x) + self.lora_B(self.lora_A(x))
        return out * self.lora_magnitude_vector if self.dora else out


def lora_llama(
    build,
    seed: int,
    *,
    lora_seed: int | None = None,
    targets: tuple[str, ...] = TARGETS,
    rank: int = 4,
    dora: bool = False,
) -> torch.nn.Module:
    """Tiny untied Llama ``seed`` with LoRA on ``targets``; only the LoRA parameters train."""
    model = build(seed, tie=False)
    torch.manual_seed(seed + 1000 if lora_seed is None else lora_seed)
    for layer in model.model.layers:
        for target in targets:
            setattr(
                layer.self_attn, target, LoraLinear(getattr(layer.self_attn, target), rank, dora)
            )
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)
    return model


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def frozen(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Frozen parameters and buffers, cloned."""
    names = set(trainable(model))
    return {n: t.clone() for n, t in model.state_dict().items() if n not in names}


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


def optimizer_for(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> float:
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(seed))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def optim_tensors(optimizer: torch.optim.Optimizer) -> dict[tuple[int, str], torch.Tensor]:
    return {
        (i, k): v.clone() for i, s in optimizer.state_dict()["state"].items() for k, v in s.items()
    }


def safetensors_keys(path: Path) -> set[str]:
    with safe_open(path, framework="pt") as f:
        return set(f.keys())


def write_adapter_config(staging: Path) -> None:
    (staging / "model").mkdir(parents=True, exist_ok=True)
    (staging / "model" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')


# ------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_adapter_holds_exactly_the_trainable_parameters(
    tmp_path: Path, tiny_llama, dora: bool
) -> None:
    model = lora_llama(tiny_llama, 0, dora=dora)
    optimizer = optimizer_for(model)
    train_step(model, optimizer, 1)
    ckpt = Checkpointer(tmp_path, weights_format=PEFT_ADAPTER)
    path = ckpt.save(0, 1, model=model, optimizer=optimizer, write_extras=write_adapter_config)

    info = read_checkpoint_info(path)
    assert info.weights_format == PEFT_ADAPTER
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["weights_format"] == {
        "file_stem": "adapter_model",
        "key_prefix": PREFIX,
        "trainable_only": True,
    }
    assert sorted(p.name for p in (path / "model").iterdir()) == [
        "adapter_config.json",
        ADAPTER_FILE,
    ]
    assert {"model/adapter_config.json", f"model/{ADAPTER_FILE}"} <= info.files.keys()
    assert (path / "model" / "adapter_config.json").read_text() == ('{"peft_type": "LORA", "r": 4}')

    expected = {PREFIX + name for name in trainable(model)}
    assert safetensors_keys(path / "model" / ADAPTER_FILE) == expected
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in expected
    assert (
        "base_model.model.model.layers.1.self_attn.v_proj.lora_magnitude_vector" in expected
    ) is dora
    on_disk = load_consolidated(path / "model", file_stem="adapter_model")
    assert equal({k[len(PREFIX) :]: v for k, v in on_disk.items()}, trainable(model))


def test_restore_loads_trainable_bitwise_and_leaves_frozen_untouched(
    tmp_path: Path, tiny_llama
) -> None:
    model = lora_llama(tiny_llama, 0, dora=True)
    optimizer = optimizer_for(model)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, 10)
    for step in (1, 2):
        train_step(model, optimizer, step)
        scheduler.step()
    ckpt = Checkpointer(tmp_path, weights_format=PEFT_ADAPTER)
    states = {"optim_states": {"lr_scheduler": scheduler}}
    path = ckpt.save(0, 2, model=model, optimizer=optimizer, **states)
    saved_trainable, saved_optim = trainable(model), optim_tensors(optimizer)
    expected_loss = train_step(model, optimizer, 3)

    # another base model (seed 1) and another LoRA init: only the adapter may change
    other = lora_llama(tiny_llama, 1, lora_seed=99, dora=True)
    other_optimizer = optimizer_for(other)
    other_scheduler = torch.optim.lr_scheduler.LinearLR(other_optimizer, 1.0, 0.1, 10)
    before = frozen(other)
    assert not equal(trainable(other), saved_trainable)
    ckpt.restore(
        path,
        model=other,
        optimizer=other_optimizer,
        optim_states={"lr_scheduler": other_scheduler},
    )
    assert equal(trainable(other), saved_trainable)
    assert equal(frozen(other), before)
    assert equal(optim_tensors(other_optimizer), saved_optim)
    assert other_scheduler.state_dict() == scheduler.state_dict()

    # the same base model: training continues exactly
    resumed = lora_llama(tiny_llama, 0, lora_seed=7, dora=True)
    resumed_optimizer = optimizer_for(resumed)
    ckpt.restore(path, model=resumed, optimizer=resumed_optimizer)
    assert train_step(resumed, resumed_optimizer, 3) == expected_loss
    assert equal(trainable(resumed), trainable(model))


def test_async_adapter_save_equals_sync(tmp_path: Path, tiny_llama) -> None:
    model = lora_llama(tiny_llama, 0)
    optimizer = optimizer_for(model)
    train_step(model, optimizer, 1)
    sync = Checkpointer(tmp_path / "sync", weights_format=PEFT_ADAPTER).save(
        0, 1, model=model, optimizer=optimizer
    )
    reference = trainable(model)
    with Checkpointer(tmp_path / "async", async_save=True, weights_format=PEFT_ADAPTER) as ckpt:
        for step in (1, 2):  # the second save copies into the first one's buffers
            path = ckpt.save(0, step, model=model, optimizer=optimizer)
            if step == 1:
                train_step(model, optimizer, 2)  # changes the model while the save runs
    first = tmp_path / "async" / "epoch_0_step_1"
    assert (first / "model" / ADAPTER_FILE).read_bytes() == (
        sync / "model" / ADAPTER_FILE
    ).read_bytes()
    other = lora_llama(tiny_llama, 0, lora_seed=3)
    Checkpointer(tmp_path, weights_format=PEFT_ADAPTER).restore(path, model=other)
    assert equal(trainable(other), trainable(model))
    assert not equal(reference, trainable(model))


def test_sharded_adapter(tmp_path: Path, tiny_llama) -> None:
    model = lora_llama(tiny_llama, 0)
    ckpt = Checkpointer(tmp_path, weights_format=PEFT_ADAPTER, max_shard_size="1KB")
    path = ckpt.save(0, 1, model=model, write_extras=write_adapter_config)
    names = sorted(p.name for p in (path / "model").iterdir())
    shards = [n for n in names if n.startswith("adapter_model-")]
    assert len(shards) > 2 and shards[0] == shard_file_name(1, len(shards), "adapter_model")
    assert set(names) == {*shards, "adapter_model.safetensors.index.json", "adapter_config.json"}
    assert all(is_weight_file_name(n, "adapter_model") for n in shards)
    assert not any(is_weight_file_name(n) for n in shards)  # not the full model's files
    other = lora_llama(tiny_llama, 0, lora_seed=5)
    ckpt.restore(path, model=other)
    assert equal(trainable(other), trainable(model))


# ----------------------------------------------------------------- format and fit errors


def test_format_mismatch_is_refused_both_ways(tmp_path: Path, tiny_llama) -> None:
    model = lora_llama(tiny_llama, 0)
    optimizer = optimizer_for(model)
    train_step(model, optimizer, 1)
    adapter = Checkpointer(tmp_path / "a", weights_format=PEFT_ADAPTER)
    full = Checkpointer(tmp_path / "f")
    adapter_path = adapter.save(0, 1, model=model, optimizer=optimizer)
    full_path = full.save(0, 1, model=model, optimizer=optimizer)
    assert read_checkpoint_info(full_path).weights_format == HF_WEIGHTS

    other = lora_llama(tiny_llama, 1)
    before = other.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    with pytest.raises(CheckpointError) as exc:
        full.restore(adapter_path, model=other)
    assert str(exc.value) == (
        f"checkpoint {adapter_path} holds a PEFT adapter (adapter_model.safetensors, trainable "
        "parameters only, keys prefixed 'base_model.model.') but this run restores full model "
        "weights (model.safetensors); only a Checkpointer(..., weights_format=PEFT_ADAPTER) "
        "restores its weights"
    )
    with pytest.raises(CheckpointError) as exc:
        adapter.restore(full_path, model=other)
    assert str(exc.value).startswith(
        f"checkpoint {full_path} holds full model weights (model.safetensors) but this run "
        "restores a PEFT adapter (adapter_model.safetensors, trainable parameters only"
    )
    assert "weights_format=HF_WEIGHTS" in str(exc.value)
    assert equal(other.state_dict(), before)

    # the optimizer alone does not depend on the weights format
    other_optimizer = optimizer_for(other)
    adapter.restore(full_path, model=other, optimizer=other_optimizer, load_weights=False)
    assert equal(optim_tensors(other_optimizer), optim_tensors(optimizer))


def test_manifest_without_weights_format_means_hf_weights(tmp_path: Path, tiny_llama) -> None:
    model = tiny_llama(0)
    path = Checkpointer(tmp_path).save(0, 1, model=model)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    del manifest["weights_format"]  # as written before weights formats existed
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert read_checkpoint_info(path).weights_format == HF_WEIGHTS
    Checkpointer(tmp_path).restore(path, model=tiny_llama(1))
    with pytest.raises(CheckpointError, match="holds full model weights"):
        Checkpointer(tmp_path, weights_format=PEFT_ADAPTER).restore(path, model=tiny_llama(1))

    for bad in ({"file_stem": "../x"}, {"trainable_only": "yes"}, {"colour": 1}, []):
        manifest["weights_format"] = bad
        (path / MANIFEST_FILE).write_text(json.dumps(manifest))
        with pytest.raises(CheckpointError, match="corrupt: 'weights_format' is invalid"):
            read_checkpoint_info(path)


def test_missing_unexpected_and_reshaped_adapter_tensors(tmp_path: Path, tiny_llama) -> None:
    ckpt = Checkpointer(tmp_path, weights_format=PEFT_ADAPTER)
    q_only = ckpt.save(0, 1, model=lora_llama(tiny_llama, 0, targets=("q_proj",)))
    both = ckpt.save(0, 2, model=lora_llama(tiny_llama, 0))

    model = lora_llama(tiny_llama, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as exc:
        ckpt.restore(q_only, model=model)
    assert str(exc.value) == (
        f"model weights in {q_only / 'model'} do not fit: missing 4 trainable tensor(s) the "
        "model has: model.layers.0.self_attn.v_proj.lora_A.weight, "
        "model.layers.0.self_attn.v_proj.lora_B.weight, "
        "model.layers.1.self_attn.v_proj.lora_A.weight, "
        "model.layers.1.self_attn.v_proj.lora_B.weight"
    )
    with pytest.raises(CheckpointError) as exc:
        ckpt.restore(both, model=lora_llama(tiny_llama, 0, targets=("q_proj",)))
    assert "4 unexpected tensor(s): model.layers.0.self_attn.v_proj.lora_A.weight" in str(exc.value)
    assert PREFIX not in str(exc.value)  # names as the model spells them

    # the same adapter, but the model froze some of it: those are named as frozen
    partly_frozen = lora_llama(tiny_llama, 0)
    for layer in partly_frozen.model.layers:
        layer.self_attn.v_proj.lora_B.weight.requires_grad_(False)
    with pytest.raises(CheckpointError) as exc:
        ckpt.restore(both, model=partly_frozen)
    assert "2 unexpected tensor(s): model.layers.0.self_attn.v_proj.lora_B.weight" in str(exc.value)
    assert "2 of them are frozen parameters or buffers of the model" in str(exc.value)

    with pytest.raises(CheckpointError) as exc:
        ckpt.restore(both, model=lora_llama(tiny_llama, 0, rank=8))
    assert str(exc.value) == (
        "shape mismatch for 'model.layers.0.self_attn.q_proj.lora_A.weight': checkpoint has "
        f"[4, 32] ({ADAPTER_FILE}), model has [8, 32]"
    )
    assert equal(model.state_dict(), before)


def test_tied_trainable_parameter_is_saved_once(tmp_path: Path, tiny_llama) -> None:
    model = tiny_llama(0, tie=True)
    for name, param in model.named_parameters():
        param.requires_grad_(name == "model.embed_tokens.weight")  # lm_head.weight is the same
    ckpt = Checkpointer(tmp_path, weights_format=PEFT_ADAPTER)
    path = ckpt.save(0, 1, model=model)
    assert safetensors_keys(path / "model" / ADAPTER_FILE) == {f"{PREFIX}model.embed_tokens.weight"}
    other = tiny_llama(1, tie=True).requires_grad_(False)
    other.model.embed_tokens.weight.requires_grad_(True)
    norm = other.model.norm.weight.clone()
    ckpt.restore(path, model=other)
    assert other.lm_head.weight is other.model.embed_tokens.weight
    assert torch.equal(other.lm_head.weight, model.lm_head.weight)
    assert torch.equal(other.model.norm.weight, norm)


def test_adapter_keys_without_the_prefix_are_refused(tmp_path: Path, tiny_llama) -> None:
    unprefixed = WeightsFormat(file_stem="adapter_model", trainable_only=True)
    path = Checkpointer(tmp_path, weights_format=unprefixed).save(
        0, 1, model=lora_llama(tiny_llama, 0)
    )
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["weights_format"] = PEFT_ADAPTER.to_json()
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"8 tensor name\(s\) lack the key prefix"):
        Checkpointer(tmp_path, weights_format=PEFT_ADAPTER).restore(
            path, model=lora_llama(tiny_llama, 0)
        )


def test_a_model_with_nothing_trainable_cannot_save_an_adapter(tmp_path: Path, tiny_llama) -> None:
    model = tiny_llama(0).requires_grad_(False)
    ckpt = Checkpointer(tmp_path, weights_format=PEFT_ADAPTER)
    with pytest.raises(CheckpointError, match="has no trainable parameters"):
        ckpt.save(0, 1, model=model)
    assert ckpt.checkpoints() == []


def test_weights_format_validation(tmp_path: Path) -> None:
    assert WeightsFormat() == HF_WEIGHTS and HF_WEIGHTS.file_name == SAFE_WEIGHTS_NAME
    assert PEFT_ADAPTER.file_name == ADAPTER_FILE
    assert PEFT_ADAPTER.index_name == "adapter_model.safetensors.index.json"
    assert PEFT_ADAPTER.name == "PEFT_ADAPTER" and HF_WEIGHTS.name == "HF_WEIGHTS"
    custom = WeightsFormat(file_stem="pytorch_model", key_prefix="a.b.")
    assert custom.describe() == "model weights (pytorch_model.safetensors, keys prefixed 'a.b.')"
    assert WeightsFormat.from_json(custom.to_json()) == custom
    for field, bad in [
        ("file_stem", ""),
        ("file_stem", "sub/model"),
        ("file_stem", "model.safetensors"),
        ("file_stem", 3),
        ("key_prefix", "base_model"),
        ("key_prefix", ".model."),
        ("key_prefix", "a..b."),
        ("trainable_only", 1),
    ]:
        with pytest.raises(ValueError, match=field.replace("file_stem", "file stem")):
            WeightsFormat(**{field: bad})
    with pytest.raises(TypeError, match="must be a WeightsFormat"):
        Checkpointer(tmp_path, weights_format="peft")  # type: ignore[arg-type]
    assert "weights_format=PEFT_ADAPTER" in repr(
        Checkpointer(tmp_path, weights_format=PEFT_ADAPTER)
    )


def test_save_consolidated_with_a_file_stem_keeps_other_files(tmp_path: Path) -> None:
    sd = {f"w{i}": torch.full((64,), float(i)) for i in range(6)}
    save_consolidated({"x": torch.ones(3)}, tmp_path)  # a full model next to the adapter
    (tmp_path / "adapter_config.json").write_text("{}")
    save_consolidated(sd, tmp_path, max_shard_size=600, file_stem="adapter_model")
    save_consolidated(sd, tmp_path, file_stem="adapter_model")  # re-save as one file
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter_config.json",
        ADAPTER_FILE,
        SAFE_WEIGHTS_NAME,
    ]
    assert equal(load_consolidated(tmp_path, file_stem="adapter_model"), sd)
    assert equal(load_consolidated(tmp_path), {"x": torch.ones(3)})
    with pytest.raises(ValueError, match="file stem"):
        save_consolidated(sd, tmp_path, file_stem="../adapter")
    with pytest.raises(
        CheckpointError, match=r"expected other\.safetensors or other\.safetensors\.index\.json"
    ):
        load_consolidated(tmp_path, file_stem="other")


# ------------------------------------------------------------ DDP and FSDP2 in one process


@pytest.mark.parametrize("wrap", ["ddp", "fsdp2"])
def test_wrapped_models_save_the_models_own_names(
    tmp_path: Path, single_rank_group: None, tiny_llama, wrap: str
) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    def wrapped(seed: int, lora_seed: int) -> torch.nn.Module:
        model = lora_llama(tiny_llama, seed, lora_seed=lora_seed)
        if wrap == "ddp":
            return DistributedDataParallel(model)
        mesh = init_device_mesh("cpu", (1,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        return fully_shard(model, mesh=mesh)

    def local(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {
            n.removeprefix("module."): (p.to_local() if hasattr(p, "to_local") else p)
            .detach()
            .clone()
            for n, p in model.named_parameters()
        }

    model = wrapped(0, 1000)
    optimizer = optimizer_for(model)
    train_step(model, optimizer, 1)
    ckpt = Checkpointer(tmp_path, weights_format=PEFT_ADAPTER)
    path = ckpt.save(0, 1, model=model, optimizer=optimizer)
    plain = lora_llama(tiny_llama, 0)
    assert safetensors_keys(path / "model" / ADAPTER_FILE) == {PREFIX + n for n in trainable(plain)}

    other = wrapped(1, 5)
    other_optimizer = optimizer_for(other)
    before = local(other)
    ckpt.restore(path, model=other, optimizer=other_optimizer)
    after, saved = local(other), local(model)
    for name, tensor in after.items():
        assert torch.equal(tensor, saved[name] if ".lora_" in name else before[name]), name
    assert equal(optim_tensors(other_optimizer), optim_tensors(optimizer))

    Checkpointer(tmp_path, weights_format=PEFT_ADAPTER).restore(path, model=plain)  # unwrapped
    assert all(torch.equal(t, saved[n]) for n, t in trainable(plain).items())


# --------------------------------------------------------------------- tools and real PEFT


def test_inspect_and_consolidate_an_adapter_checkpoint(tmp_path: Path, tiny_llama, capsys) -> None:
    model = lora_llama(tiny_llama, 0)
    path = Checkpointer(tmp_path / "ckpt", weights_format=PEFT_ADAPTER).save(
        0, 1, model=model, write_extras=write_adapter_config
    )
    report = inspect(str(path), tensors=True)
    assert report["problems"] == []
    assert report["weights_format"]["name"] == "PEFT_ADAPTER"
    assert report["weights_format"]["file_stem"] == "adapter_model"
    names = {t["name"] for t in report["model"]["tensor_list"]}
    assert names == {PREFIX + n for n in trainable(model)}
    assert report["model"]["parameters"] == sum(t.numel() for t in trainable(model).values())

    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "model format  a PEFT adapter (adapter_model.safetensors, trainable parameters" in out
    assert "weights       8 tensors" in out

    out_dir = tmp_path / "adapter"
    assert main(["consolidate", str(tmp_path / "ckpt"), str(out_dir)]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["adapter_config.json", ADAPTER_FILE]
    assert (out_dir / ADAPTER_FILE).read_bytes() == (path / "model" / ADAPTER_FILE).read_bytes()
    bare = inspect(str(out_dir), tensors=False)  # a folder without a manifest: found by stem
    assert bare["model"]["file_stem"] == "adapter_model" and bare["model"]["tensors"] == 8


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_peft_loads_the_checkpoint_model_folder(tmp_path: Path, tiny_llama, dora: bool) -> None:
    peft = pytest.importorskip("peft")
    model = lora_llama(tiny_llama, 0, dora=dora)
    config = peft.LoraConfig(
        r=4, lora_alpha=4, lora_dropout=0.0, target_modules=list(TARGETS), use_dora=dora
    )

    def extras(staging: Path) -> None:
        config.save_pretrained(staging / "model")

    path = Checkpointer(tmp_path, weights_format=PEFT_ADAPTER).save(
        0, 1, model=model, write_extras=extras
    )
    assert "model/adapter_config.json" in read_checkpoint_info(path).files
    loaded = peft.PeftModel.from_pretrained(tiny_llama(0, tie=False), path / "model")
    params = dict(loaded.named_parameters())
    for name, tensor in trainable(model).items():
        if name.endswith("lora_magnitude_vector"):
            peft_name = f"{PREFIX}{name}.default.weight"
        else:
            module, _, leaf = name.rpartition(".")
            peft_name = f"{PREFIX}{module}.default.{leaf}"
        assert torch.equal(params[peft_name].detach(), tensor), name
