"""Worker of test_data_parallel.py, run by torchrun on 2 CPU processes (gloo).

Checks, in one launch: the meshes build_mesh makes for several MeshConfigs, the reduction helpers,
and data-parallel training of a tiny Llama: FSDP2, DDP, HSDP, frozen parameters, activation
checkpointing, mixed precision and CPU offload. Every data-parallel run trains 3 AdamW steps on
per-rank halves of each global batch with the exact loss normalisation (sum of token losses /
global label tokens × dp size); rank 0 also trains a plain copy on the whole batch, and the
losses and the gathered weights are compared with it. Writes ``rank<r>.json`` into argv[1].
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import transformers

from automodel.distributed import (
    MESH_DIMS,
    MeshConfig,
    MeshError,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    build_mesh,
    build_strategy,
    destroy_distributed,
    dp_group,
    dp_rank_and_size,
    global_label_tokens,
    init_distributed,
    is_main_process,
    main_process_first,
    no_sync,
    submesh,
)
from automodel.distributed._strategy import decoder_blocks

VOCAB, SEQ, GLOBAL_BATCH, STEPS, LR = 64, 10, 4, 3, 1e-2
# LoRA-like: everything frozen but these (block 0 mixes frozen and trainable parameters)
TRAINABLE = ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight")


# ----------------------------------------------------------------------------- meshes


def describe(mesh) -> dict[str, object]:
    views = {name: submesh(mesh, name).size() for name in ("dp", "dp_shard_cp", "dp_cp")}
    return {
        "dims": list(mesh.mesh_dim_names),
        "sizes": {d: mesh[d].size() for d in MESH_DIMS},
        "views": views,
        "dp_rank_and_size": list(dp_rank_and_size(mesh)),
        "dp_ranks": dist.get_process_group_ranks(dp_group(mesh)),
        "dp_cp_ranks": dist.get_process_group_ranks(dp_group(mesh, include_cp=True)),
        "coordinate": mesh.get_coordinate(),
    }


def mesh_checks() -> dict[str, object]:
    from automodel.distributed._fsdp import fsdp_mesh

    out: dict[str, object] = {}
    for key, config in {
        "dp2": MeshConfig(dp_size=2, dp_replicate_size=1),
        "hsdp": MeshConfig(dp_replicate_size=2),
        "tp2": MeshConfig(tp_size=2),
        "cp2": MeshConfig(cp_size=2),
        "pp2": MeshConfig(pp_size=2),
    }.items():
        mesh = build_mesh(config)
        out[key] = describe(mesh)
        shard = fsdp_mesh(mesh)
        out[key]["fsdp_mesh"] = {"dims": list(shard.mesh_dim_names), "shape": list(shard.shape)}
        del mesh, shard
    for key, config in {
        "ep2": MeshConfig(ep_size=2),
        "ep2_cp2": MeshConfig(ep_size=2, cp_size=2),
    }.items():
        mesh = build_mesh(config)
        out[key] = {
            name: dist.get_process_group_ranks(submesh(mesh, name).get_group())
            for name in ("ep", "ep_replicas")
        }
        del mesh
    for key, kwargs in {
        "error_dp3": {"config": MeshConfig(dp_size=3)},
        "error_auto": {"config": MeshConfig(tp_size=3)},
        "error_world": {"world_size": 4},
    }.items():
        try:
            build_mesh(**kwargs)
        except MeshError as exc:
            out[key] = str(exc)
    return out


# ------------------------------------------------------------------------ reductions


def reduce_checks(rank: int, out_dir: Path) -> dict[str, object]:
    tensor = torch.tensor([float(rank), 1.0])
    summed = all_reduce_sum(tensor)
    tp_mesh = build_mesh(MeshConfig(tp_size=2))
    marker = out_dir / "main_first.txt"
    with main_process_first():
        if is_main_process():
            time.sleep(0.3)
            marker.write_text("written by rank 0")
        saw_marker = marker.exists()
    barrier()
    result = {
        "sum_int": all_reduce_sum(rank + 1),
        "sum_int_type": type(all_reduce_sum(rank + 1)).__name__,
        "sum_float": all_reduce_sum(0.5 * (rank + 1)),
        "sum_tensor": summed.tolist(),
        "sum_tensor_input_unchanged": tensor.tolist() == [float(rank), 1.0],
        "mean_int": all_reduce_mean(rank),
        "mean_tensor": all_reduce_mean(torch.tensor(rank)).item(),
        "global_tokens_int": global_label_tokens(3 + rank),
        "global_tokens_tensor": global_label_tokens(torch.tensor(3 + rank)).item(),
        "sum_one_rank_group": all_reduce_sum(rank + 1, dp_group(tp_mesh)),
        "is_main": is_main_process(),
        "main_first_saw_marker": saw_marker,
    }
    del tp_mesh
    return result


# -------------------------------------------------------------------------- training


def tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same batch on every rank; rows 0-1 are mostly masked, rows 2-3 barely (uneven)."""
    gen = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=gen)
    labels = ids.clone()
    labels[0, : SEQ - 2] = -100
    labels[1, : SEQ - 4 + step] = -100
    labels[3, :2] = -100
    return ids, labels


def token_loss_sum(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        labels[:, 1:].flatten(),
        ignore_index=-100,
        reduction="sum",
    )


def optimizer_for(model) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)


def freeze(model) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(name in TRAINABLE)


def reference_run(model, halves: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    """One process, the plain mean over the global batch's label tokens.

    ``halves=False``: one backward over the whole batch. ``halves=True``: the two halves'
    gradients accumulated one after the other, which is what the two ranks compute together
    (float32 sums in the same order), so it should match them to the last bit.
    """
    optimizer = optimizer_for(model)
    losses = []
    for step in range(STEPS):
        ids, labels = global_batch(step)
        tokens = (labels[:, 1:] != -100).sum()
        parts = (
            [slice(0, GLOBAL_BATCH // 2), slice(GLOBAL_BATCH // 2, None)]
            if halves
            else [slice(None)]
        )
        total = 0.0
        for part in parts:
            loss_sum = token_loss_sum(model, ids[part], labels[part])
            (loss_sum / tokens).backward()
            total += loss_sum.item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total / tokens.item())
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


def parallel_run(
    model, mesh, dp_rank: int, dp_size: int, accumulate: bool = False
) -> tuple[list[float], dict, list[int]]:
    """This rank's rows of each global batch, loss = sum / global label tokens × dp size.

    ``accumulate``: one row per micro-batch, every backward but the last under ``no_sync``.
    Also returns, per step, how many gradient reductions DDP ran (a comm hook counts them).
    """
    optimizer = optimizer_for(model)
    group = dp_group(mesh, include_cp=True)
    reductions = [0]
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def counting_hook(state, bucket):
            reductions[0] += 1
            return allreduce_hook(state, bucket)

        model.register_comm_hook(group, counting_hook)
    rows = GLOBAL_BATCH // dp_size
    losses, per_step = [], []
    for step in range(STEPS):
        ids, labels = global_batch(step)
        ids, labels = (t[dp_rank * rows : (dp_rank + 1) * rows] for t in (ids, labels))
        tokens = global_label_tokens(int((labels[:, 1:] != -100).sum()), group)
        parts = [slice(i, i + 1) for i in range(rows)] if accumulate else [slice(None)]
        loss_sum, before = 0.0, reductions[0]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            with contextlib.nullcontext() if last else no_sync(model):
                part_sum = token_loss_sum(model, ids[part], labels[part])
                (part_sum / tokens * dp_size).backward()
            loss_sum += part_sum.item()
            if i == 0 and accumulate:  # FSDP2 without sync: no sharded gradient yet
                reductions.append(any(p.grad is not None for p in model.parameters()))
        per_step.append(reductions[0] - before)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(all_reduce_sum(loss_sum, group) / tokens)
    inner = model.module if hasattr(model, "module") else model
    weights = {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for n, p in inner.named_parameters()
    }
    return losses, weights, [*per_step, *reductions[1:]]


def compare(losses, weights, reference) -> dict[str, object]:
    ref_losses, ref_weights = reference
    loss_rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True))
    abs_diff, rel_diff = 0.0, 0.0
    for name, ref in ref_weights.items():
        diff = (weights[name] - ref).abs().max().item()
        abs_diff = max(abs_diff, diff)
        rel_diff = max(rel_diff, diff / max(ref.abs().max().item(), 1e-12))
    return {
        "names_equal": sorted(weights) == sorted(ref_weights),
        "loss_max_rel": loss_rel,
        "weight_max_abs": abs_diff,
        "weight_max_rel": rel_diff,
        "ref_losses": ref_losses,
    }


RUNS = {
    # name: (strategy, options, mesh config, frozen)
    "fsdp2": ("fsdp2", {}, MeshConfig(), False),
    "fsdp2_no_reshard": ("fsdp2", {"reshard_after_forward": False}, MeshConfig(), False),
    "fsdp2_ac": ("fsdp2", {"activation_checkpointing": True}, MeshConfig(), False),
    "hsdp": ("fsdp2", {}, MeshConfig(dp_replicate_size=2), False),
    "ddp": ("ddp", {}, MeshConfig(), False),
    "ddp_ac": ("ddp", {"activation_checkpointing": True}, MeshConfig(), False),
    "fsdp2_frozen": ("fsdp2", {}, MeshConfig(), True),
    "ddp_frozen": ("ddp", {}, MeshConfig(), True),
    "fsdp2_bf16": ("fsdp2", {"mp_param_dtype": "bfloat16"}, MeshConfig(), False),
    "fsdp2_cpu_offload": ("fsdp2", {"cpu_offload": True}, MeshConfig(), False),
    # one row per micro-batch, gradients reduced once per step (see parallel_run)
    "fsdp2_no_sync": ("fsdp2", {}, MeshConfig(), False),
    "ddp_no_sync": ("ddp", {}, MeshConfig(), False),
}


def training_checks(rank: int) -> dict[str, object]:
    base = tiny_llama()
    references = {}
    if rank == 0:  # (frozen, halves) -> (losses, weights)
        for frozen in (False, True):
            for halves in (False, True):
                model = copy.deepcopy(base)
                if frozen:
                    freeze(model)
                references[frozen, halves] = reference_run(model, halves)
        del model
    out: dict[str, object] = {"blocks": [type(b).__name__ for b in decoder_blocks(base)]}
    meshes = {}  # one mesh per config: building one creates 8 process groups
    for key, (name, options, config, frozen) in RUNS.items():
        started = time.perf_counter()
        try:
            model = copy.deepcopy(base)
            if frozen:
                freeze(model)
            if repr(config) not in meshes:
                meshes[repr(config)] = build_mesh(config)
            mesh = meshes[repr(config)]
            dp_rank, dp_size = dp_rank_and_size(mesh)
            model = build_strategy(name, **options).parallelize(model, mesh)
            info: dict[str, object] = {"type": type(model).__name__}
            inner = model.module if hasattr(model, "module") else model
            q = inner.model.layers[0].self_attn.q_proj.weight
            info["block_type"] = type(inner.model.layers[0]).__name__
            info["placements"] = [str(p) for p in getattr(q, "placements", ())]
            accumulate = key.endswith("_no_sync")
            losses, weights, info["reductions"] = parallel_run(
                model, mesh, dp_rank, dp_size, accumulate
            )
            info["losses"] = losses
            if rank == 0:
                info["vs_full_batch"] = compare(losses, weights, references[frozen, False])
                info["vs_halves"] = compare(losses, weights, references[frozen, True])
            del model, weights, q, inner
        except Exception:
            info = {"error": traceback.format_exc()[-3000:]}
        info["seconds"] = round(time.perf_counter() - started, 3)
        out[key] = info
        gc.collect()
    out["tied_across_blocks"] = tied_across_blocks(meshes[repr(MeshConfig())])
    del meshes
    if rank == 0:  # the float32 bound: one process, whole batch vs accumulated halves
        full, halves = references[False, False], references[False, True]
        out["halves_vs_full_batch"] = compare(halves[0], halves[1], full)
    return out


def tied_across_blocks(mesh) -> dict[str, object]:
    """FSDP2 on a BERT-style LM whose word embedding (inside a no-split block) is tied to the
    output head: one training step, and the two stay one parameter."""
    try:
        config = transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, is_decoder=True, tie_word_embeddings=True,
        )  # fmt: skip
        torch.manual_seed(0)
        model = transformers.BertLMHeadModel(config)
        model = build_strategy("fsdp2").parallelize(model, mesh)
        ids, _ = global_batch(0)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        head = model.cls.predictions.decoder.weight
        info = {
            "loss": float(loss),
            "tied": head is model.bert.embeddings.word_embeddings.weight,
            "grad": head.grad is not None,
        }
        del model, head, loss
    except Exception:
        info = {"error": traceback.format_exc()[-3000:]}
    gc.collect()
    return info


def main() -> None:
    out_dir = Path(sys.argv[1])
    timing = {"cpu_seconds_before_main": round(time.process_time(), 3)}  # mostly imports
    started = time.perf_counter()
    env = init_distributed()
    result: dict[str, object] = {
        "env": {
            "rank": env.rank,
            "local_rank": env.local_rank,
            "world_size": env.world_size,
            "device": str(env.device),
            "backend": env.backend,
            "is_main": env.is_main,
        },
        "again_same": init_distributed() == env,
    }
    for key, check in {
        "mesh": mesh_checks,
        "reduce": lambda: reduce_checks(env.rank, out_dir),
        "training": lambda: training_checks(env.rank),
    }.items():
        section = time.perf_counter()
        result[key] = check()
        timing[key] = round(time.perf_counter() - section, 3)
    timing["total_after_imports"] = round(time.perf_counter() - started, 3)
    result["timing"] = timing
    (out_dir / f"rank{env.rank}.json").write_text(json.dumps(result, indent=1))
    gc.collect()
    destroy_distributed()
    destroy_distributed()  # idempotent


if __name__ == "__main__":
    main()
