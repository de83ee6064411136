"""Worker of test_ep_dispatch.py, run by torchrun with 2 ranks (gloo, CPU).

``ep_worker.py OUT``: each case builds the whole token set of every rank (same seed on all
ranks), computes a float32 reference MoE (a loop over all E SwiGLU experts) and its gradients,
then runs the expert-parallel path on this rank's tokens and experts only (dispatch ->
per-local-expert SwiGLU -> combine -> backward) and records the largest differences.

Each rank writes ``rank<r>.json``: ``{case: {metric: value} | {"error": traceback}}``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import fake_deep_ep
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from worker_cases import run_cases

from automodel.moe._deepep import DeepEPDispatcher
from automodel.moe._ep_dispatch import AllToAllDispatcher, combine, dispatch

HIDDEN, INTER = 16, 24
TOL = dict(rtol=1e-5, atol=1e-6)


def swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor):
    return (F.silu(x @ gate) * (x @ up)) @ down


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| / (|b| + atol/rtol), so that < rtol means assert_close passes."""
    if a.numel() == 0:
        return 0.0
    return ((a - b).abs() / (b.abs() + TOL["atol"] / TOL["rtol"])).max().item()


def rel_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``: the error of a whole tensor, for low-precision comparisons."""
    return 0.0 if a.numel() == 0 else ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def make_routing(
    tokens: list[int], num_experts: int, k: int, low: int, high: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per rank: (x, topk_ids with k distinct experts in [low, high), weights, output grad)."""
    gen = torch.Generator().manual_seed(1234)
    data = []
    for t in tokens:
        x = torch.randn(t, HIDDEN, generator=gen)
        scores = torch.rand(t, high - low, generator=gen)
        ids = scores.topk(k, dim=-1).indices + low
        weights = torch.softmax(torch.randn(t, k, generator=gen), dim=-1)
        grad_out = torch.randn(t, HIDDEN, generator=gen)
        data.append((x, ids, weights, grad_out))
    return data


def make_experts(num_experts: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(99)
    return [
        torch.randn(num_experts, HIDDEN, INTER, generator=gen) * 0.3,
        torch.randn(num_experts, HIDDEN, INTER, generator=gen) * 0.3,
        torch.randn(num_experts, INTER, HIDDEN, generator=gen) * 0.3,
    ]


def reference(data, weights: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Per-expert loop over every rank's tokens, all E experts, float32."""
    xs = [d[0].clone().requires_grad_() for d in data]
    ws = [d[2].clone().requires_grad_() for d in data]
    params = [w.clone().requires_grad_() for w in weights]
    x, ids = torch.cat(xs), torch.cat([d[1] for d in data])
    y = x.new_zeros(*ids.shape, HIDDEN)  # y[t, j]: output of expert ids[t, j] for token t
    for e in range(params[0].shape[0]):
        tok, slot = (ids == e).nonzero(as_tuple=True)
        if tok.numel():
            y = y.index_put((tok, slot), swiglu(x[tok], *(p[e] for p in params)))
    out = (y * torch.cat(ws).unsqueeze(-1)).sum(dim=1)
    (out * torch.cat([d[3] for d in data])).sum().backward()
    sizes = [d[0].shape[0] for d in data]
    return {
        "out": list(out.detach().split(sizes)),
        "x_grad": [t.grad for t in xs],
        "w_grad": [t.grad for t in ws],
        "expert_grads": [torch.zeros_like(p) if p.grad is None else p.grad for p in params],
        "counts": torch.bincount(ids.reshape(-1), minlength=params[0].shape[0]),
    }


def make_dispatcher(backend: str, group, num_experts: int, dtype: torch.dtype = torch.float32):
    """``all_to_all``, or ``deepep`` on the CPU stand-in for DeepEP (tokens sent in ``dtype``)."""
    if backend == "all_to_all":
        return AllToAllDispatcher(group, num_experts)
    return DeepEPDispatcher(group, num_experts, exchange_dtype=dtype, deep_ep=fake_deep_ep)


def ep_case(
    tokens: list[int],
    num_experts: int = 8,
    k: int = 2,
    skew: bool = False,
    mesh: bool = False,
    backend: str = "all_to_all",
    exchange_dtype: torch.dtype = torch.float32,
) -> dict:
    """Expert-parallel output and gradients against the reference, for this rank."""
    rank, world = dist.get_rank(), dist.get_world_size()
    low = num_experts - num_experts // world if skew else 0  # skew: only the last rank's experts
    data = make_routing(tokens, num_experts, k, low, num_experts)
    full = make_experts(num_experts)
    ref = reference(data, full)

    group = init_device_mesh("cpu", (world,), mesh_dim_names=("ep",)) if mesh else None
    dispatcher = make_dispatcher(backend, group, num_experts, exchange_dtype)
    experts = dispatcher.local_experts
    params = [w[experts.start : experts.stop].clone().requires_grad_() for w in full]
    x0, ids, w0, grad_out = data[rank]
    x, weights = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    recv_x, counts, handle = dispatcher.dispatch(x, ids, weights)
    outs = [
        swiglu(chunk.float(), *(p[e] for p in params))  # GroupedExperts.ffn casts so too
        for e, chunk in enumerate(recv_x.split(counts.tolist()))
    ]
    y = torch.cat(outs) if outs else recv_x
    out = dispatcher.combine(y, handle).to(x.dtype)
    (out * grad_out).sum().backward()

    pairs = {
        "out": (out.detach(), ref["out"][rank]),
        "x_grad": (x.grad, ref["x_grad"][rank]),
        "w_grad": (weights.grad, ref["w_grad"][rank]),
        "expert_grad": (
            torch.cat([p.grad.flatten() for p in params]),
            torch.cat([g[experts.start : experts.stop].flatten() for g in ref["expert_grads"]]),
        ),
    }
    result = {
        "tokens": x.shape[0],
        "recv_rows": recv_x.shape[0],
        "counts": counts.tolist(),
        "ref_counts": ref["counts"][experts.start : experts.stop].tolist(),
        "out_shape": list(out.shape),
        **{key: max_rel(*pair) for key, pair in pairs.items()},
        **{f"{key}_norm": rel_norm(*pair) for key, pair in pairs.items()},
        "expert_grad_nonzero": any(p.grad.abs().sum().item() > 0 for p in params),
    }
    if backend == "all_to_all":
        result.update(sent=handle.input_splits, received=handle.output_splits)
    else:  # DeepEP sends a token once per rank: fewer tokens received than rows computed
        result.update(received_tokens=handle.received, buffers=len(fake_deep_ep.created))
    return result


def functional_bf16_case() -> dict:
    """The module-level functions in bfloat16 with an identity expert: out = sum_j w_j * x."""
    rank = dist.get_rank()
    gen = torch.Generator().manual_seed(7 + rank)
    x = torch.randn(5, HIDDEN, generator=gen).to(torch.bfloat16)
    ids = torch.stack([torch.randperm(4, generator=gen)[:2] for _ in range(5)])
    weights = torch.rand(5, 2, generator=gen)
    recv_x, counts, handle = dispatch(x, ids, weights, dist.group.WORLD, 4)
    out = combine(recv_x, handle)
    expected = (x.float().unsqueeze(1) * weights.unsqueeze(-1)).sum(dim=1).to(torch.bfloat16)
    return {
        "dtype": str(out.dtype),
        "recv_dtype": str(recv_x.dtype),
        "equal": torch.equal(out, expected),
        "rows": int(counts.sum()),
    }


def indivisible_case() -> dict:
    x, ids = torch.zeros(3, HIDDEN), torch.zeros(3, 1, dtype=torch.long)
    try:
        dispatch(x, ids, torch.ones(3, 1), None, 5)
    except ValueError as exc:
        return {"error_message": str(exc)}
    return {"error_message": None}


def model_case(balancing: str, dispatcher: str = "all_to_all") -> dict:
    """A patched tiny Qwen3-MoE, whole (EP=1) vs experts sharded over both ranks (EP=2).

    Every rank feeds its own tokens to both; logits, the loss and every gradient must agree.
    An expert's EP gradient sums both ranks' tokens, so it is compared with the sum over ranks
    of the EP=1 gradients (this rank's slice).
    """
    import copy

    from automodel.moe import (
        GroupedExperts,
        moe_aux_loss,
        moe_metrics,
        patch_hf_moe,
        shard_experts,
    )

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    whole = _tiny_qwen3_moe()
    config = whole.config
    patch_hf_moe(whole, balancing=balancing, aux_loss_coeff=0.01)
    sharded = copy.deepcopy(whole)
    every_token = copy.deepcopy(whole)  # sees both ranks' rows: the load summed over ranks
    if dispatcher == "deepep":  # shard_experts' own path, on the CPU stand-in for DeepEP
        with stand_in_deep_ep():
            names = shard_experts(sharded, None, dispatcher="deepep")
        for module in sharded.modules():
            if isinstance(module, GroupedExperts):  # the stand-in takes float32 tokens too
                module.dispatcher.exchange_dtype = torch.float32
        buffers = {id(m.dispatcher.buffers) for m in sharded.modules() if hasattr(m, "dispatcher")}
    else:
        names = shard_experts(sharded, None)
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(10 + rank))
    all_ids = torch.empty(world * 2, 10, dtype=ids.dtype)
    dist.all_gather_into_tensor(all_ids, ids)
    every_token(all_ids)
    losses = {}
    for key, model in (("whole", whole), ("sharded", sharded)):
        out = model(ids, labels=ids)
        aux = moe_aux_loss(model)
        loss = out.loss if aux is None else out.loss + aux
        loss.backward()
        losses[key] = (out.logits.detach(), loss.detach())
    result = {"sharded": names, "logits": max_rel(losses["sharded"][0], losses["whole"][0])}
    if dispatcher == "deepep":
        result["shared_buffers"] = len(buffers)
        result["dispatchers"] = sorted(
            {type(m.dispatcher).__name__ for m in sharded.modules() if hasattr(m, "dispatcher")}
        )
    result["metrics_summed"] = moe_metrics(sharded, reset=False, sum_over=dist.group.WORLD)
    result["metrics_local"] = moe_metrics(sharded, reset=False)
    result["metrics_every_token"] = moe_metrics(every_token, reset=False)
    result["loss"] = max_rel(losses["sharded"][1], losses["whole"][1])
    grads = {n: p.grad for n, p in whole.named_parameters()}
    weights = dict(whole.named_parameters())
    worst, expert_shapes, gathered = 0.0, {}, 0.0
    per_rank = config.num_experts // world
    for name, param in sharded.named_parameters():
        reference, grad = grads[name], param.grad
        assert param.shape == reference.shape, name  # the global shape is kept
        if isinstance(param, DTensor):  # a sharded expert weight: its grad sums both ranks
            reference = reference.clone()
            dist.all_reduce(reference)
            reference = reference[rank * per_rank : (rank + 1) * per_rank]
            grad = grad.to_local()
            expert_shapes[name] = list(param.to_local().shape)
            gathered = max(gathered, max_rel(param.full_tensor(), weights[name].detach()))
        worst = max(worst, max_rel(grad, reference))
    result["grads"] = worst
    result["expert_shapes"] = expert_shapes
    result["gathered"] = gathered
    del whole, sharded, every_token, grads, losses
    return result


def expert_lora_case(strategy: str, **options) -> dict:
    """LoRA on the experts (peft.target_parameters) of a tiny Qwen3-MoE, experts sharded over
    both ranks (EP=2) under the FSDP2 or DDP strategy, against the whole model on both ranks'
    tokens in this process: logits, the adapters' reduced gradients, the factors after one SGD
    step (AdamW would magnify float32 rounding of gradients near its eps into its update), and
    the merged export from the gathered state dict (what the recipe saves).

    Each rank's loss is its tokens' summed CE over all the ranks' tokens, × 2 (the recipe's
    normalisation: the strategy averages over the 2 dp ranks). With DDP, a hook sees each
    expert factor's gradient on this rank before the average.
    """
    import copy

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from automodel.distributed import MeshConfig, build_mesh, build_strategy, submesh
    from automodel.moe import GroupedExperts, patch_hf_moe, shard_experts
    from automodel.peft import LoraConfig, apply_lora, merged_state_dict

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    whole = _tiny_qwen3_moe()
    config = whole.config
    patch_hf_moe(whole, balancing="none")
    experts = ["*.experts.gate_up_proj", "*.experts.down_proj"]
    apply_lora(whole, LoraConfig(dim=2, alpha=4, target_modules=["q_proj"], target_parameters=experts))  # fmt: skip
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # B starts at zero: random factors, so that A learns too
        for param in (p for p in whole.parameters() if p.requires_grad):
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    model = copy.deepcopy(whole)
    mesh = build_mesh(MeshConfig(ep_size=world), device_type="cpu")
    shard_experts(model, submesh(mesh, "ep"))
    kept = {p for m in model.modules() if isinstance(m, GroupedExperts) for p in m.parameters(recurse=False)}  # fmt: skip
    before_average: dict[str, torch.Tensor] = {}
    if strategy == "ddp":
        for name, param in model.named_parameters():
            if "experts." in name and param.requires_grad:
                param.register_hook(lambda g, n=name: before_average.setdefault(n, g.clone()))
    parallel = build_strategy(strategy, **options).parallelize(model, mesh, ignored_params=kept)
    model = getattr(parallel, "module", parallel)  # DDP wraps, FSDP2 shards in place

    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(10 + rank))
    all_ids = torch.empty(world * 2, 10, dtype=ids.dtype)
    dist.all_gather_into_tensor(all_ids, ids)
    logits, optimizers = [], []
    for net, tokens, scale in ((whole, all_ids, 1.0), (parallel, ids, world)):
        net.train()
        out = net(input_ids=tokens).logits
        loss = F.cross_entropy(out[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum")
        (loss * scale / all_ids[:, 1:].numel()).backward()
        logits.append(out.detach())
        trained = [p for p in net.parameters() if p.requires_grad]
        optimizers.append(torch.optim.SGD(trained, lr=0.1, momentum=0.9, weight_decay=0.01))

    def full(t: torch.Tensor) -> torch.Tensor:
        return t.full_tensor() if isinstance(t, DTensor) else t

    def worst(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
        """The largest relative (see max_rel) and absolute difference of any pair."""
        rel = max(max_rel(full(a), b) for a, b in pairs)
        return rel, max((full(a) - b).abs().max().item() for a, b in pairs)

    reference = dict(whole.named_parameters())
    factors = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = worst([(p.grad, reference[n].grad) for n, p in factors.items()])
    for optimizer in optimizers:
        optimizer.step()
    stepped = worst([(p.detach(), reference[n].detach()) for n, p in factors.items()])
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    exported, expected = merged_state_dict(model, state=state), merged_state_dict(whole)
    assert exported.keys() == expected.keys()

    def by_expert(name: str, grad: torch.Tensor) -> torch.Tensor:
        """Row e: expert e's part (rows e*r..e*r+r-1 of A, columns k*E + e of B)."""
        if name.endswith("lora_A.weight"):
            return grad.view(config.num_experts, -1)
        return grad.view(grad.shape[0], -1, config.num_experts).permute(2, 0, 1).flatten(1)

    return {
        "factors": len(factors),
        "logits": max_rel(logits[1], logits[0][rank * 2 : rank * 2 + 2]),
        "grads": grads[0],
        "grads_abs": grads[1],
        "stepped": stepped[0],
        "stepped_abs": stepped[1],
        "merged": worst([(exported[k], expected[k]) for k in expected])[0],
        "experts_with_grads": {
            n: by_expert(n, g).abs().sum(dim=1).nonzero().flatten().tolist()
            for n, g in before_average.items()
        },
    }


@contextlib.contextmanager
def stand_in_deep_ep():
    """``require_deepep`` finds the stand-in module and CUDA (only for building dispatchers)."""
    from automodel.moe import _deepep

    saved = _deepep._import_deep_ep, torch.cuda.is_available
    _deepep._import_deep_ep, torch.cuda.is_available = (lambda: fake_deep_ep), (lambda: True)
    try:
        yield
    finally:
        _deepep._import_deep_ep, torch.cuda.is_available = saved


def _tiny_qwen3_moe() -> torch.nn.Module:
    """The tiny Qwen3-MoE both whole-model comparisons use: 8 experts, top-2, 2 layers."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        num_experts=8, num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8,
    )  # fmt: skip
    return Qwen3MoeForCausalLM(config)


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    cases = {
        "balanced": lambda: ep_case([7, 5]),
        "balanced_mesh": lambda: ep_case([4, 8], mesh=True),
        "top1_many_experts": lambda: ep_case([9, 6], num_experts=16, k=1),
        "skewed": lambda: ep_case([6, 4], skew=True),
        "rank1_no_tokens": lambda: ep_case([6, 0]),
        "no_tokens_anywhere": lambda: ep_case([0, 0]),
        "bf16_identity": functional_bf16_case,
        "indivisible": indivisible_case,
        "model_ep2_aux_loss": lambda: model_case("aux_loss"),
        "model_ep2_no_balancing": lambda: model_case("none"),
        "deepep_balanced": lambda: ep_case([7, 5], backend="deepep"),
        "deepep_balanced_mesh": lambda: ep_case([4, 8], mesh=True, backend="deepep"),
        "deepep_top1_many_experts": lambda: ep_case([9, 6], 16, k=1, backend="deepep"),
        "deepep_top4": lambda: ep_case([8, 6], num_experts=8, k=4, backend="deepep"),
        "deepep_skewed": lambda: ep_case([6, 4], skew=True, backend="deepep"),
        "deepep_rank1_no_tokens": lambda: ep_case([6, 0], backend="deepep"),
        "deepep_no_tokens_anywhere": lambda: ep_case([0, 0], backend="deepep"),
        "deepep_bf16": lambda: ep_case([7, 5], backend="deepep", exchange_dtype=torch.bfloat16),
        "deepep_model_ep2_aux_loss": lambda: model_case("aux_loss", dispatcher="deepep"),
        "expert_lora_ep2_fsdp2": lambda: expert_lora_case("fsdp2", activation_checkpointing=True),
        "expert_lora_ep2_ddp": lambda: expert_lora_case("ddp"),
    }
    run_cases(cases, out)


if __name__ == "__main__":
    main()
