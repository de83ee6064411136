"""Tensor (and sequence) parallelism for Hugging Face decoders with ``parallelize_module``.

``tp_plan_for(model)`` reads the model's own Hugging Face plan (``model.tp_plan`` in
transformers 5, ``model._tp_plan`` / ``config.base_model_tp_plan`` before), or falls back to a
built-in plan for the Llama / Qwen2 / Qwen3 / Mistral layout, and translates it to torch
``ParallelStyle`` objects; ``apply_tensor_parallel`` applies it on a 1-D mesh. Compose with
FSDP2 by calling ``fully_shard(..., mesh=mesh["dp"])`` afterwards on a 2-D ("dp", "tp") mesh.
Nothing here imports transformers: models are duck-typed.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ParallelStyle, parallelize_module

from ._hf_config import layer_configs, text_config
from ._tp_plans import (
    builtin_decoder_plan,
    matching_modules,
    matching_names,
    sequence_parallel_plan,
    style_from_hf,
)

#: attention attributes that some Hugging Face models use to reshape q/k/v (transformers 5
#: Llama-style attention reshapes with -1 and has none of them); divided by the TP size.
HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "num_key_value_heads", "num_kv_heads")


def hf_tp_plan(model: nn.Module) -> dict[str, str] | None:
    """The model's own Hugging Face tensor-parallel plan (full module paths), if it has one."""
    for attr in ("tp_plan", "_tp_plan"):
        try:
            plan = getattr(model, attr, None)
        except Exception:  # a property that needs a distributed setup
            plan = None
        if isinstance(plan, dict) and plan:
            return dict(plan)
    base_plan = getattr(getattr(model, "config", None), "base_model_tp_plan", None)
    if base_plan:
        prefix = getattr(model, "base_model_prefix", "") or ""
        prefix = f"{prefix}." if isinstance(getattr(model, prefix, None), nn.Module) else ""
        return {prefix + k: v for k, v in base_plan.items()}
    return None


def _output_projection(model: nn.Module) -> str | None:
    """Module path of the LM head (``get_output_embeddings()``, else a child ``lm_head``)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Module):
        return None
    return next((n for n, m in model.named_modules() if m is head), None)


def _sole_holder(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, child) when `model` (no tensor-parallel plan of its own) holds no parameters
    itself and one child, a model with a config, holds them all: a wrapper around a model."""
    if hf_tp_plan(model) or next(model.parameters(recurse=False), None) is not None:
        return None
    holders = [(n, c) for n, c in model.named_children() if next(c.parameters(), None) is not None]
    if len(holders) != 1 or not hasattr(holders[0][1], "config"):
        return None
    return holders[0]


def _decoder_layers(model: nn.Module) -> str | None:
    """Path of a Llama-style layer stack: layers with ``self_attn.q_proj`` and ``mlp.gate_proj``."""
    for name, module in model.named_modules():
        if name.rpartition(".")[2] != "layers" or not isinstance(
            module, nn.ModuleList | nn.ModuleDict
        ):
            continue
        first = next(iter(module.children()), None)
        attn, mlp = getattr(first, "self_attn", None), getattr(first, "mlp", None)
        if hasattr(attn, "q_proj") and hasattr(mlp, "gate_proj"):
            return name
    return None


def _resolve(model: nn.Module, plan: dict[str, str]) -> dict[str, str]:
    """Keep the plan keys that select modules of ``model`` (a pipeline stage may lack some)."""
    params = {n for n, _ in model.named_parameters()}
    out = {}
    for key, style in plan.items():
        if matching_modules(model, key):
            out[key] = style
        elif matching_names(params, key):
            raise NotImplementedError(
                f"tensor-parallel plan entry {key!r}: {style!r} names a parameter; only module "
                "entries are supported"
            )
    return out


def tp_plan_for(model: nn.Module, sequence_parallel: bool = False) -> dict[str, ParallelStyle]:
    """The torch tensor-parallel plan for ``model``: ``{module path (wildcards): ParallelStyle}``.

    Uses the model's Hugging Face plan when it has one, else the built-in plan for a
    Llama-style decoder (q/k/v/gate/up column-wise, o/down row-wise, vocabulary-parallel
    embedding, LM head column-wise with gathered logits). ``sequence_parallel=True`` also
    shards norms and the residual stream on the sequence dimension.
    """
    if sequence_parallel and hasattr(model, "stage_index"):
        raise NotImplementedError(
            "sequence parallelism inside pipeline stages is not supported: stages exchange "
            "plain hidden states; use tensor parallelism without it"
        )
    wrapped = _sole_holder(model)
    if wrapped is not None:  # a wrapper (e.g. a loss around the model): the model's plan
        name, inner = wrapped
        return {f"{name}.{k}": v for k, v in tp_plan_for(inner, sequence_parallel).items()}
    hf_plan = hf_tp_plan(model)
    lm_head = _output_projection(model)
    if not hf_plan:
        layers = _decoder_layers(model)
        if layers is None:
            raise ValueError(
                f"{type(model).__name__} has no tensor-parallel plan (model.tp_plan / "
                "config.base_model_tp_plan) and is not a Llama-style decoder; pass plan=..."
            )
        hf_plan = builtin_decoder_plan(layers, lm_head or "lm_head")
    hf_plan = _resolve(model, hf_plan)
    if sequence_parallel:
        return sequence_parallel_plan(model, hf_plan, lm_head)
    plan = {}
    for key, style in hf_plan.items():
        translated = style_from_hf(key, style)
        if translated is not None:
            plan[key] = translated
    return plan


def _check_heads(model: nn.Module, tp_size: int) -> None:
    """Every layer's head counts split evenly (heterogeneous configs are read per layer)."""
    config = text_config(model)
    per_layer = getattr(config, "is_heterogeneous", False)
    for i, layer_cfg in enumerate(layer_configs(config)):
        for attr in ("num_attention_heads", "num_key_value_heads"):
            value = getattr(layer_cfg, attr, None)
            if isinstance(value, int) and value % tp_size:
                layer = f" (layer {i})" if per_layer else ""
                raise ValueError(
                    f"{attr}={value}{layer} is not divisible by the tensor-parallel size "
                    f"{tp_size}: attention heads cannot be split evenly"
                )


def _shared_parameters(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """Groups of (module, parameter name) that hold the same Parameter (tied weights)."""
    groups: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                groups.setdefault(id(param), []).append((module, name))
    return [g for g in groups.values() if len(g) > 1]


def _retie(groups: list[list[tuple[nn.Module, str]]]) -> None:
    """Point tied parameters at one tensor again after ``parallelize_module`` replaced them."""
    for group in groups:
        params = [module._parameters[name] for module, name in group]
        keep = params[0]
        for (module, name), param in zip(group[1:], params[1:], strict=True):
            if param is keep:
                continue
            same_layout = (
                isinstance(keep, DTensor) == isinstance(param, DTensor)
                and keep.shape == param.shape
                and (not isinstance(keep, DTensor) or keep.placements == param.placements)
            )
            if not same_layout:
                raise ValueError(
                    f"tied parameter {type(module).__name__}.{name} got a different tensor-parallel "
                    "layout than the weight it is tied to; untie them or use a plan that shards "
                    "both the same way"
                )
            module._parameters[name] = keep


def _fix_head_counts(model: nn.Module, tp_size: int) -> None:
    """Divide per-module head counts of attention blocks whose projections got sharded."""
    for module in model.modules():
        q_proj = getattr(module, "q_proj", None)
        weight = getattr(q_proj, "weight", None)
        if not isinstance(weight, DTensor) or getattr(module, "_automodel_tp_heads", False):
            continue
        for attr in HEAD_COUNT_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(module, attr, value // tp_size)
        module._automodel_tp_heads = True


def apply_tensor_parallel(
    model: nn.Module,
    tp_mesh: DeviceMesh,
    sequence_parallel: bool = False,
    plan: dict[str, ParallelStyle] | None = None,
) -> nn.Module:
    """Shard ``model`` in place over the 1-D ``tp_mesh`` and return it.

    ``plan`` defaults to ``tp_plan_for(model, sequence_parallel)``. Tied weights (an LM head
    tied to the embedding) stay tied when both sides get the same layout. Outputs (logits)
    come back as plain, full tensors on every rank.
    """
    if tp_mesh.ndim != 1:
        raise ValueError(
            f"apply_tensor_parallel needs a 1-D mesh, got {tp_mesh.ndim}-D: pass mesh['tp']"
        )
    tp_size = tp_mesh.size()
    if tp_size == 1:
        return model
    _check_heads(model, tp_size)
    if plan is None:
        plan = tp_plan_for(model, sequence_parallel=sequence_parallel)
    tied = _shared_parameters(model)
    parallelize_module(model, tp_mesh, plan)
    _retie(tied)
    _fix_head_counts(model, tp_size)
    return model


__all__ = ["apply_tensor_parallel", "hf_tp_plan", "tp_plan_for"]
