"""Activation memory and step time per rank of a Llama-shaped model: whole sequence vs cp ranks.

Run by hand (not part of the tests), one launch per context-parallel size:

    uv run python benchmarks/context_parallel.py                                  # cp 1
    uv run torchrun --nproc-per-node 2 benchmarks/context_parallel.py             # cp 2
    uv run torchrun --nproc-per-node 4 benchmarks/context_parallel.py --out r.json

With more than one process the sequence is split with
`automodel.distributed.AllGatherContextParallel` (gloo on CPU, nccl on CUDA). Activation
memory is measured the same way on every device: the bytes of the distinct tensors autograd
saves for backward during one forward (`torch.autograd.graph.saved_tensors_hooks`), which is
what a sequence split is meant to shrink; parameters and their gradients are left out. Step
time is the median forward + backward of `--steps` steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM

from automodel.distributed import AllGatherContextParallel


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=8192, help="tokens per row")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--out", help="append the result as a JSON line to this file")
    return parser.parse_args()


def saved_bytes(run, model: torch.nn.Module) -> int:
    """Bytes of the distinct storages autograd saves for backward while `run()` executes,
    `model`'s parameters left out."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta" and not isinstance(t, torch.nn.Parameter):
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = run()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = sum(n for ptr, n in storages.items() if ptr not in params)
    loss.backward()
    return total


def main() -> None:
    args = parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    device = torch.device("cuda" if cuda else "cpu")
    dtype = getattr(torch, args.dtype)
    cp = None
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
        cp = AllGatherContextParallel(dist.group.WORLD)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.seq,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device, dtype)
    if cp is not None:
        AttentionInterface.register("automodel_cp_allgather", cp.hf_attention)
        model.set_attn_implementation("automodel_cp_allgather")
    ids = torch.randint(0, args.vocab, (1, args.seq), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": torch.roll(ids, -1, 1)}
    if cp is not None:
        batch = cp.shard_batch(batch)
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = batch.pop("labels")

    def step() -> torch.Tensor:
        logits = model(**batch, use_cache=False).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

    activations = saved_bytes(step, model)  # also the warm-up step
    times = []
    for _ in range(args.steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step().backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result = {
        "cp": world,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dtype": args.dtype,
        "seq": args.seq,
        "local_tokens": batch["input_ids"].shape[1],
        "hidden": args.hidden,
        "layers": args.layers,
        "heads": f"{args.heads}/{args.kv_heads}",
        "saved_activations_mib": round(activations / 2**20, 1),
        "step_s": round(statistics.median(times), 3),
    }
    if world == 1 or dist.get_rank() == 0:
        print(json.dumps(result))
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
