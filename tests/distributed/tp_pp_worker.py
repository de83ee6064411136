"""Worker of test_tp_pp.py, run by torchrun with 2 ranks.

``tp_pp_worker.py cpu OUT``: gloo on CPU. Tensor parallel (TP=2, with and without sequence
parallel, Llama and Qwen3, the model's Hugging Face plan and the built-in one, FSDP2 over a
("dp", "tp") = (1, 2) mesh on top), pipeline parallel (PP=2: GPipe, 1F1B, interleaved 1F1B
with two stages per rank, a Mistral with a sliding window shorter than the sequence; and
PP=1 x TP=2: TP inside a stage), all-gather context parallel (CP=2: the attention alone, and
Llama / Qwen3 through the transformers attention interface with padding, and packed rows
against each document on its own) and the ring
attention's CPU refusal, each compared with a single-process reference run on every rank.

``tp_pp_worker.py cp OUT``: NCCL on 2 GPUs, context parallel (CP=2) against the reference.

Each rank writes ``rank<r>.json``: ``{case: {metric: value} | {"error": traceback}}``.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _shared import TINY_LLAMA
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from worker_cases import run_cases

from automodel.distributed._cp import make_cp_batch_and_ctx
from automodel.distributed._cp_allgather import AllGatherContextParallel, load_balanced_positions
from automodel.distributed._pp import (
    build_pipeline_schedule,
    split_decoder_into_stages,
    sum_tied_embedding_grads,
    tied_embedding_group,
)
from automodel.distributed._tp import apply_tensor_parallel

TINY = {**TINY_LLAMA, "num_hidden_layers": 4, "max_position_embeddings": 64}


def build(kind: str = "llama", **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(**{**TINY, "head_dim": 8, **overrides}))
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(**{**TINY, **overrides}))
    return LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides}))


def batch(size: int = 4, seq: int = 8) -> torch.Tensor:
    return torch.randint(0, 64, (size, seq), generator=torch.Generator().manual_seed(1))


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def mesh_dims(t: torch.Tensor) -> list[str]:
    return list(t.device_mesh.mesh_dim_names or ()) if isinstance(t, DTensor) else []


def grad_diff(model: torch.nn.Module, ref_grads: dict[str, torch.Tensor]) -> dict[str, float]:
    return {
        name: (full(p.grad) - ref_grads[name]).abs().max().item()
        for name, p in model.named_parameters()
        if p.grad is not None
    }


def reference(model: torch.nn.Module, ids: torch.Tensor):
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.logits.detach(), out.loss.detach(), grads


def tp_case(kind: str, sp: bool, fsdp: bool = False, builtin: bool = False, **cfg) -> dict:
    """TP=2 (optionally with SP, FSDP2 on a ("dp", "tp") mesh) vs the single-process model."""
    ref = build(kind, **cfg)
    model = copy.deepcopy(ref)
    ids = batch()
    ref_logits, ref_loss, ref_grads = reference(ref, ids)
    if builtin:  # no Hugging Face plan: the built-in Llama-family plan applies
        model._tp_plan = {}
        model.config.base_model_tp_plan = None
    if fsdp:
        mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=("dp", "tp"))
        apply_tensor_parallel(model, mesh["tp"], sequence_parallel=sp)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])
    else:
        mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
        apply_tensor_parallel(model, mesh, sequence_parallel=sp)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    layer = model.model.layers[0]
    q = layer.self_attn.q_proj.weight
    result = {
        "norm_mesh_dims": mesh_dims(layer.input_layernorm.weight),
        "q_norm_is_dtensor": isinstance(layer.self_attn.q_norm.weight, DTensor)
        if kind == "qwen3"
        else None,
        "logits": (full(out.logits) - ref_logits).abs().max().item(),
        "loss": abs(out.loss.item() - ref_loss.item()),
        "grads": grad_diff(model, ref_grads),
        "q_local_shape": list(q.to_local().shape),
        "q_mesh_dims": mesh_dims(q),
        "tied": model.lm_head.weight is model.model.embed_tokens.weight,
    }
    del model, ref, mesh, out, q, layer
    return result


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())


def pp_case(
    schedule: str,
    n_microbatches: int,
    attn: str,
    num_stages: int = 2,
    kind: str = "llama",
    tp=False,
    frozen_embedding: bool = False,
    **cfg,
) -> dict:
    """PP=2 (or PP=1 x TP=2) vs the single-process model: microbatch losses, stage gradients."""
    ref = build(kind, attn_implementation=attn, **cfg)
    ref.model.embed_tokens.weight.requires_grad_(not frozen_embedding)
    model = copy.deepcopy(ref)
    ids = batch()
    losses = [causal_lm_loss(ref(input_ids=mb).logits, mb) for mb in ids.chunk(n_microbatches)]
    torch.stack(losses).mean().backward()
    ref_grads = {n: p.grad.clone() for n, p in ref.named_parameters() if p.grad is not None}

    if tp:
        mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=("pp", "tp"))
        stages = split_decoder_into_stages(model, mesh["pp"], num_stages)
        for stage in stages:
            apply_tensor_parallel(stage, mesh["tp"])
    else:
        mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("pp",))
        stages = split_decoder_into_stages(model, mesh, num_stages)
    sched = build_pipeline_schedule(stages, n_microbatches, causal_lm_loss, schedule)
    pp_losses: list[torch.Tensor] = []
    has_first = any(s.is_first for s in stages)
    has_last = any(s.is_last for s in stages)
    if has_first and has_last:
        sched.step(ids, target=ids, losses=pp_losses)
    elif has_first:
        sched.step(ids)
    elif has_last:
        sched.step(target=ids, losses=pp_losses)
    else:
        sched.step()
    if cfg.get("tie_word_embeddings"):  # the two ends' gradients of the shared weight, summed
        sum_tied_embedding_grads(stages, tied_embedding_group(mesh))
    result = {
        "ties_embedding": [s.ties_embedding for s in stages],
        "stages": [s.stage_index for s in stages],
        "layers": [list(s.model.layers.keys()) for s in stages],
        "params": sorted(n for s in stages for n, _ in s.named_parameters()),
        "model_layers_left": len(model.model.layers),
        "grads": {n: v for s in stages for n, v in grad_diff(s, ref_grads).items()},
        "grads_missing": [n for s in stages for n, p in s.named_parameters() if p.grad is None],
        "tp_sharded": sorted(
            n for s in stages for n, p in s.named_parameters() if isinstance(p, DTensor)
        ),
    }
    if pp_losses:
        result["losses"] = [
            abs(a.item() - b.item()) for a, b in zip(pp_losses, losses, strict=True)
        ]
    del model, ref, stages, sched, mesh
    return result


def cp_cpu_case() -> dict:
    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("cp",))
    try:
        make_cp_batch_and_ctx(mesh, {"input_ids": batch(), "labels": batch()})
    except RuntimeError as exc:
        return {"error_message": str(exc)}
    return {"error_message": None}


def cp_allgather_attention_case(length: int = 12) -> dict:
    """The attention of this rank's query chunks over every rank's keys vs full causal SDPA."""
    cp = AllGatherContextParallel(dist.group.WORLD)
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, h, length, 8, generator=gen) for h in (4, 2, 2))  # GQA 4/2
    weight = torch.randn(2, 4, length, 8, generator=gen)
    for t in (q, k, v):
        t.requires_grad_()
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    (ref * weight).sum().backward()
    index = load_balanced_positions(length, cp.size, cp.rank)
    local = [t.detach().index_select(2, index).requires_grad_() for t in (q, k, v)]
    out = cp.attention(*local)
    (out * weight.index_select(2, index)).sum().backward()
    result = {
        "positions": index.tolist(),
        "out": (out - ref.detach().index_select(2, index)).abs().max().item(),
    }
    for name, mine, full_t in zip("qkv", local, (q, k, v), strict=True):
        result[f"d{name}"] = (mine.grad - full_t.grad.index_select(2, index)).abs().max().item()
    return result


def cp_against_reference(
    model: torch.nn.Module, ref: torch.nn.Module, shard: dict, loss_of
) -> tuple[float, dict[str, float]]:
    """This rank's `shard` through `model`, backward: (loss summed over the ranks, each
    parameter's max |gradient summed over the ranks - ref's|); `ref` has run its backward."""
    target = shard.pop("labels")
    loss = loss_of(model(**shard, use_cache=False).logits, target)
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    grads = {}
    for (name, p), (_, r) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        g = p.grad.clone()
        dist.all_reduce(g)  # every rank's tokens' share of the gradient
        grads[name] = (g - r.grad).abs().max().item()
    return total.item(), grads


def cp_allgather_model_case(kind: str) -> dict:
    """CP=2 through the transformers attention interface vs the whole sequence: loss, grads.

    Rows of 10 tokens (padded to 12 by the split), the second right-padded after 7.
    """
    from transformers import AttentionInterface

    ref = build(kind, attn_implementation="sdpa")
    model = copy.deepcopy(ref)
    cp = AllGatherContextParallel(dist.group.WORLD)
    AttentionInterface.register("automodel_cp_allgather", cp.hf_attention)
    model.set_attn_implementation("automodel_cp_allgather")
    ids = batch(2, 10)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], 1).masked_fill(mask == 0, -100)
    tokens = int((labels != -100).sum())

    def loss_of(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat = logits.flatten(0, 1).float()
        return F.cross_entropy(flat, target.flatten(), ignore_index=-100, reduction="sum") / tokens

    ref_loss = loss_of(ref(input_ids=ids, attention_mask=mask).logits, labels)
    ref_loss.backward()
    shard = cp.shard_batch({"input_ids": ids, "labels": labels, "attention_mask": mask})
    total, grads = cp_against_reference(model, ref, shard, loss_of)
    result = {
        "local_shape": list(shard["input_ids"].shape),
        "positions": shard["position_ids"][0].tolist(),
        "loss": abs(total - ref_loss.item()),
        "grads": grads,
        "config_attn": model.config._attn_implementation,
    }
    del model, ref
    return result


def cp_allgather_documents_case() -> dict:
    """Packed rows under CP=2 (documents=True) vs every document run on its own: loss, grads.

    Rows of 10: documents of 4 and 6 tokens, and of 3 and 4 then 3 padding positions (their
    own document, labels -100); the split pads them to 12.
    """
    from transformers import AttentionInterface

    ref = build("llama", attn_implementation="sdpa")
    model = copy.deepcopy(ref)
    cp = AllGatherContextParallel(dist.group.WORLD, documents=True)
    AttentionInterface.register("automodel_cp_allgather", cp.hf_attention)
    model.set_attn_implementation("automodel_cp_allgather")
    gen = torch.Generator().manual_seed(3)
    rows = [[4, 6], [3, 4]]
    docs = [[torch.randint(1, 64, (n,), generator=gen) for n in row] for row in rows]
    ids, labels, positions = (torch.zeros(2, 10, dtype=torch.long) for _ in range(3))
    labels.fill_(-100)
    for r, row in enumerate(docs):
        start = 0
        for doc in row:
            n = len(doc)
            ids[r, start : start + n] = doc
            labels[r, start : start + n - 1] = doc[1:]
            positions[r, start : start + n] = torch.arange(n)
            start += n
        positions[r, start:] = torch.arange(10 - start)
    tokens = int((labels != -100).sum())

    def loss_of(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat = logits.flatten(0, 1).float()
        return F.cross_entropy(flat, target.flatten(), ignore_index=-100, reduction="sum") / tokens

    ref_loss = 0.0
    for row in docs:
        for doc in row:
            target = torch.cat([doc[1:], torch.tensor([-100])])[None]
            loss = loss_of(ref(input_ids=doc[None]).logits, target)
            loss.backward()
            ref_loss += loss.item()
    shard = cp.shard_batch({"input_ids": ids, "labels": labels, "position_ids": positions})
    total, grads = cp_against_reference(model, ref, shard, loss_of)
    result = {
        "positions": shard["position_ids"].tolist(),
        "loss": abs(total - ref_loss),
        "grads": grads,
    }
    del model, ref
    return result


def cp_cuda_case(dtype: torch.dtype, kv_heads: int) -> dict:
    """CP=2 on CUDA vs the full-sequence model; loss scaled by the global token count."""
    device = torch.device("cuda", torch.cuda.current_device())
    ref = build(attn_implementation="sdpa", num_key_value_heads=kv_heads).to(device, dtype)
    model = copy.deepcopy(ref)
    ids = batch(2, 16).to(device)
    _, ref_loss, ref_grads = reference(ref, ids)
    mesh = init_device_mesh("cuda", (2,), mesh_dim_names=("cp",))
    n_items = ids.shape[0] * (ids.shape[1] - 1)
    cp_batch, ctx = make_cp_batch_and_ctx(mesh, {"input_ids": ids, "labels": ids})
    with ctx:
        out = model(**cp_batch, num_items_in_batch=n_items, use_cache=False)
        out.loss.backward()
    loss = out.loss.detach().float()
    dist.all_reduce(loss)
    rel = {}
    for name, p in model.named_parameters():
        g = p.grad.float()
        dist.all_reduce(g)
        r = ref_grads[name].float()
        rel[name] = ((g - r).norm() / r.norm().clamp_min(1e-12)).item()
    result = {
        "local_seq": cp_batch["input_ids"].shape[1],
        "loss_rel": abs(loss.item() - ref_loss.float().item()) / abs(ref_loss.float().item()),
        "grads_rel": rel,
    }
    del model, ref, mesh, out
    return result


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "cp":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if mode == "cp" else "gloo")
    if mode == "cp":
        cases = {
            "cp_mha_fp32": lambda: cp_cuda_case(torch.float32, kv_heads=4),
            "cp_gqa_bf16": lambda: cp_cuda_case(torch.bfloat16, kv_heads=2),
        }
    else:
        cases = {
            "tp_llama": lambda: tp_case("llama", sp=False),
            "tp_llama_builtin_plan": lambda: tp_case("llama", sp=False, builtin=True),
            "tp_sp_llama_tied": lambda: tp_case("llama", sp=True, tie_word_embeddings=True),
            "tp_qwen3": lambda: tp_case("qwen3", sp=False),
            "tp_sp_qwen3": lambda: tp_case("qwen3", sp=True),
            "fsdp_tp_llama": lambda: tp_case("llama", sp=False, fsdp=True),
            "fsdp_tp_sp_llama": lambda: tp_case("llama", sp=True, fsdp=True),
            "pp_gpipe": lambda: pp_case("gpipe", 2, "sdpa"),
            "pp_1f1b": lambda: pp_case("1f1b", 4, "eager"),
            "pp_interleaved_1f1b": lambda: pp_case("interleaved_1f1b", 4, "sdpa", num_stages=4),
            "pp_1f1b_mistral_window": lambda: pp_case(
                "1f1b", 2, "sdpa", kind="mistral", sliding_window=3
            ),
            "pp1_tp2_gpipe": lambda: pp_case("gpipe", 2, "sdpa", num_stages=1, tp=True),
            "pp_1f1b_tied": lambda: pp_case("1f1b", 4, "sdpa", tie_word_embeddings=True),
            "pp_1f1b_tied_frozen": lambda: pp_case(
                "1f1b", 4, "sdpa", tie_word_embeddings=True, frozen_embedding=True
            ),
            "cp_cpu": cp_cpu_case,
            "cp_allgather_attention": cp_allgather_attention_case,
            "cp_allgather_llama": lambda: cp_allgather_model_case("llama"),
            "cp_allgather_qwen3": lambda: cp_allgather_model_case("qwen3"),
            "cp_allgather_documents": cp_allgather_documents_case,
        }
    run_cases(cases, out)


if __name__ == "__main__":
    main()
