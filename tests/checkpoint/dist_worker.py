"""Worker of test_distributed.py, run by torchrun: FSDP2 on CPU (gloo), 2 ranks, torch only.

Checks sync and async save, restore into fresh objects, per-rank train state and exact
continuation, and a PEFT_ADAPTER save + restore of a partly frozen model; writes
``rank<r>.json`` (and ``reference.pt`` from rank 0) into argv[1].
"""

from __future__ import annotations

import copy
import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from automodel.checkpoint import PEFT_ADAPTER, Checkpointer, CheckpointError


class Counter:
    """A per-rank stateful object."""

    def __init__(self, value: int) -> None:
        self.value = value

    def state_dict(self) -> dict[str, int]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.value = state["value"]


class TinyLM(torch.nn.Module):
    """Embedding, two MLP blocks, LM head tied to the embedding (torch only: imports fast)."""

    def __init__(self, vocab: int = 128, hidden: int = 32) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.layers = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.LayerNorm(hidden),
                torch.nn.Linear(hidden, 64),
                torch.nn.GELU(),
                torch.nn.Linear(64, hidden),
            )
            for _ in range(2)
        )
        self.head = torch.nn.Linear(hidden, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for layer in self.layers:
            h = h + layer(h)
        logits = self.head(h[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


class AdapterLM(TinyLM):
    """TinyLM plus a trainable rank-1 bottleneck: ``lora_A.weight`` is [1, 32], so on two
    ranks one of them holds an empty shard of it."""

    def __init__(self) -> None:
        super().__init__()
        self.lora_A = torch.nn.Linear(32, 1, bias=False)
        self.lora_B = torch.nn.Linear(1, 32, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        h = h + self.lora_B(self.lora_A(h))
        for layer in self.layers:
            h = h + layer(h)
        logits = self.head(h[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


ADAPTER_TRAINABLE = ("lora_A.weight", "lora_B.weight", "layers.0.3.weight", "layers.1.3.weight")


def build_adapter(seed: int, mesh) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """AdapterLM with everything frozen but ADAPTER_TRAINABLE, FSDP2-sharded."""
    torch.manual_seed(seed)
    model = AdapterLM()
    for name, param in model.named_parameters():
        param.requires_grad_(name in ADAPTER_TRAINABLE)
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return model, optimizer


def adapter_checks(root: Path, mesh, rank: int) -> dict[str, object]:
    """Async PEFT_ADAPTER save of an FSDP2 model, restore into another one."""
    model, optimizer = build_adapter(3, mesh)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0)
    for step in (1, 2):
        train_step(model, optimizer, scheduler, rank, step)
    with Checkpointer(root, async_save=True, weights_format=PEFT_ADAPTER) as ckpt:
        path = ckpt.save(0, 2, model=model, optimizer=optimizer)
        saved = local_state(model, optimizer)
        train_step(model, optimizer, scheduler, rank, 3)  # mutates while saving
        ckpt.wait()
        other, other_optimizer = build_adapter(4, mesh)
        before = local_state(other, other_optimizer)
        ckpt.restore(path, model=other, optimizer=other_optimizer)
        after = local_state(other, other_optimizer)
    trainable = {f"model.{name}" for name in ADAPTER_TRAINABLE}
    return {
        "adapter_trainable_equal": all(torch.equal(after[k], saved[k]) for k in trainable),
        "adapter_frozen_untouched": all(
            torch.equal(after[k], before[k])
            for k in before
            if k.startswith("model.") and k not in trainable
        ),
        "adapter_optim_equal": same(
            {k: v for k, v in after.items() if k.startswith("optim.")},
            {k: v for k, v in saved.items() if k.startswith("optim.")},
        ),
        "adapter_empty_shard": rank == 1 and other.lora_A.weight.to_local().numel() == 0,
    }


def build(seed: int, mesh) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(seed)
    model = TinyLM()
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, total_iters=10)
    return model, optimizer, scheduler


def train_step(model, optimizer, scheduler, rank: int, step: int) -> float:
    gen = torch.Generator().manual_seed(1000 * rank + step)
    ids = torch.randint(0, 128, (2, 8), generator=gen)
    loss = model(ids)
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def local_state(model, optimizer) -> dict[str, torch.Tensor]:
    """This rank's shards of every parameter and optimizer tensor, cloned."""
    out = {f"model.{k}": v.to_local().clone() for k, v in model.state_dict().items()}
    for fqn, entries in get_optimizer_state_dict(model, optimizer)["state"].items():
        for key, value in entries.items():
            local = value.to_local() if hasattr(value, "to_local") else value
            out[f"optim.{fqn}.{key}"] = local.clone()
    return out


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    root = out / "ckpt"
    result: dict[str, object] = {"rank": rank}

    model, optimizer, scheduler = build(0, mesh)
    counter = Counter(100 + rank)
    for step in (1, 2):
        train_step(model, optimizer, scheduler, rank, step)
    states = {"optim_states": {"lr_scheduler": scheduler}, "train_states": {"counter": counter}}

    def extras(staging: Path) -> None:
        (staging / "model").mkdir(parents=True, exist_ok=True)
        (staging / "model" / "config.json").write_text(json.dumps({"hidden_size": 32}))

    sync = Checkpointer(root)
    sync_path = sync.save(0, 2, model=model, optimizer=optimizer, write_extras=extras, **states)
    ref_sync = local_state(model, optimizer)

    train_step(model, optimizer, scheduler, rank, 3)
    counter.value += 10
    with Checkpointer(root, async_save=True, keep_last_n=2) as ckpt:
        async_path = ckpt.save(
            0, 3, model=model, optimizer=optimizer, write_extras=extras, **states
        )
        ref_async = local_state(model, optimizer)
        scheduler_ref = copy.deepcopy(scheduler.state_dict())
        lr_ref = optimizer.param_groups[0]["lr"]
        full_optim = get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        full_optim = copy.deepcopy(full_optim)  # plain tensors such as "step" are not copied
        loss_continued = train_step(model, optimizer, scheduler, rank, 4)  # mutates while saving
        counter.value += 1000
        ckpt.wait()

        model3, optimizer3, scheduler3 = build(2, mesh)
        counter3 = Counter(-1)
        ckpt.restore(
            sync_path,
            model=model3,
            optimizer=optimizer3,
            optim_states={"lr_scheduler": scheduler3},
            train_states={"counter": counter3},
        )
        result["sync_equal"] = same(local_state(model3, optimizer3), ref_sync)
        result["counter_sync"] = counter3.value

        model2, optimizer2, scheduler2 = build(1, mesh)
        counter2 = Counter(-1)
        restored = {
            "optim_states": {"lr_scheduler": scheduler2},
            "train_states": {"counter": counter2},
        }
        info = ckpt.restore(async_path, model=model2, optimizer=optimizer2, **restored)
        result["world_size_saved"] = info.world_size
        result["async_equal"] = same(local_state(model2, optimizer2), ref_async)
        result["counter_async"] = counter2.value
        result["scheduler_equal"] = scheduler2.state_dict() == scheduler_ref
        result["lr_equal"] = optimizer2.param_groups[0]["lr"] == lr_ref
        result["loss_equal"] = train_step(model2, optimizer2, scheduler2, rank, 4) == loss_continued

        # a second async save reuses the snapshot buffers (DTensors with CPU shards)
        ckpt.save(0, 4, model=model, optimizer=optimizer, **states)
        ref_again = local_state(model, optimizer)
        train_step(model, optimizer, scheduler, rank, 5)
        ckpt.wait()
        ckpt.restore(ckpt.latest(), model=model3, optimizer=optimizer3)
        result["reused_equal"] = same(local_state(model3, optimizer3), ref_again)
        result["latest"] = ckpt.latest().name
        result["checkpoints"] = [p.name for p in ckpt.checkpoints()]
        try:
            ckpt.restore(async_path, model=model3, train_states={"nope": counter3})
        except CheckpointError as exc:
            result["missing_error"] = str(exc)

    result.update(adapter_checks(out / "adapter", mesh, rank))

    if rank == 0:
        flat = {
            f"state.{fqn}.{key}": value
            for fqn, entries in full_optim["state"].items()
            for key, value in entries.items()
        }
        torch.save({"optim": flat, "lr": full_optim["param_groups"][0]["lr"]}, out / "reference.pt")
        del flat
    (out / f"rank{rank}.json").write_text(json.dumps(result))

    sync.close()
    del model, optimizer, scheduler, model2, optimizer2, scheduler2, model3, optimizer3, scheduler3
    del ref_sync, ref_async, ref_again, full_optim, sync, ckpt, states, restored, info
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
