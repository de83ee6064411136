"""Tensor-parallel plans: Hugging Face plan strings as torch ``ParallelStyle`` objects.

Hugging Face models declare their tensor-parallel layout as strings (``config.base_model_tp_plan``
plus the model class's own ``_tp_plan``, merged into ``model.tp_plan``): ``"colwise"``,
``"rowwise"``, ``"colwise_gather_output"``, ``"embedding_rowwise"``... This module maps those
strings onto ``torch.distributed.tensor.parallel`` styles, keeps a built-in plan for the
Llama / Qwen2 / Qwen3 / Mistral family (used when a model ships none), and rewrites a plan for
sequence parallelism.

Layout with sequence parallelism (``S`` = sharded on the sequence dim, ``R`` = replicated):
the embedding reduce-scatters to ``S``; the residual stream between blocks stays an ``S``
DTensor (so Hugging Face code that reads its shape sees the global sequence length); norms run
on ``S``; the inputs of attention and MLP are all-gathered to ``R``; their row-parallel output
projections reduce-scatter back to ``S``; the final norm hands a local ``S`` shard to the LM head,
which all-gathers it and returns full logits.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatch
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    SequenceParallel,
)


class ReplicateWithGradAllReduce(ParallelStyle):
    """Replicated parameters of a module that runs on one rank's slice of the heads.

    For Qwen3's per-head ``q_norm`` / ``k_norm`` (Hugging Face ``"replicated_with_grad_allreduce"``):
    they sit between a column- and a row-parallel projection, so their input holds this rank's
    heads only. The parameters become replicated DTensors and the input a DTensor sharded on the
    heads dim (the one before the last), so DTensor sums the parameter gradients across ranks.
    """

    @staticmethod
    def _replicate(name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        for p_name, param in list(module.named_parameters(recurse=False)):
            replicated = DTensor.from_local(param.data, mesh, [Replicate()], run_check=False)
            module.register_parameter(p_name, nn.Parameter(replicated, param.requires_grad))

    @staticmethod
    def _input(module: nn.Module, inputs: tuple[Any, ...], mesh: DeviceMesh) -> tuple[Any, ...]:
        x = inputs[0]
        if not isinstance(x, DTensor):
            x = DTensor.from_local(x, mesh, [Shard(x.ndim - 2)], run_check=False)
        return (x, *inputs[1:])

    @staticmethod
    def _output(module: nn.Module, output: Any, mesh: DeviceMesh) -> Any:
        return output.to_local() if isinstance(output, DTensor) else output

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(module, device_mesh, self._replicate, self._input, self._output)


class GatherSequence(ParallelStyle):
    """All-gather a block's hidden states from sequence-sharded to replicated before it runs.

    Unlike ``PrepareModuleInput`` it finds the hidden states either as the first positional
    argument or as the ``hidden_states`` keyword (Hugging Face calls attention with keywords
    and the MLP positionally). A plain tensor input is taken as this rank's sequence shard.
    """

    def __init__(self, *, sequence_dim: int = 1) -> None:
        super().__init__()
        self.sequence_dim = sequence_dim

    def _gather(self, x: Any, mesh: DeviceMesh) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        if not isinstance(x, DTensor):
            x = DTensor.from_local(x, mesh, [Shard(self.sequence_dim)], run_check=False)
        return x.redistribute(placements=[Replicate()])

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]):
            if args:
                args = (self._gather(args[0], device_mesh), *args[1:])
            elif "hidden_states" in kwargs:
                kwargs = {
                    **kwargs,
                    "hidden_states": self._gather(kwargs["hidden_states"], device_mesh),
                }
            return args, kwargs

        module.register_forward_pre_hook(hook, with_kwargs=True)
        return module


def _colwise_rep() -> ParallelStyle:
    return ColwiseParallel(output_layouts=Replicate())


def _rowwise_rep() -> ParallelStyle:
    return RowwiseParallel(input_layouts=Replicate())


#: Hugging Face plan string -> factory of the equivalent torch style (``None``: leave replicated).
HF_STYLES: dict[str, Any] = {
    "colwise": ColwiseParallel,
    "rowwise": RowwiseParallel,
    "colwise_rep": _colwise_rep,
    "colwise_gather_output": _colwise_rep,
    "rowwise_rep": _rowwise_rep,
    "rowwise_split_input": _rowwise_rep,
    # torch's Rowwise/Colwise styles shard an nn.Embedding on the vocabulary / hidden dim
    "embedding_rowwise": _rowwise_rep,
    "embedding_colwise": _colwise_rep,
    "sequence_parallel": SequenceParallel,
    "replicated_with_grad_allreduce": ReplicateWithGradAllReduce,
    "replicate": None,
}


def style_from_hf(name: str, style: str) -> ParallelStyle | None:
    """The torch ``ParallelStyle`` for Hugging Face plan string ``style`` (at plan key ``name``)."""
    if style not in HF_STYLES:
        raise NotImplementedError(
            f"tensor-parallel style {style!r} (plan entry {name!r}) has no torch-native "
            f"translation in automodel.distributed; supported: {sorted(HF_STYLES)}"
        )
    factory = HF_STYLES[style]
    return None if factory is None else factory()


def builtin_decoder_plan(layers: str = "model.layers", lm_head: str = "lm_head") -> dict[str, str]:
    """Hugging Face-style plan strings for a Llama / Qwen2 / Qwen3 / Mistral decoder."""
    base = layers.rpartition(".")[0]
    embed = f"{base}.embed_tokens" if base else "embed_tokens"
    plan = {embed: "embedding_rowwise"}
    for proj in ("q_proj", "k_proj", "v_proj"):
        plan[f"{layers}.*.self_attn.{proj}"] = "colwise"
    plan[f"{layers}.*.self_attn.o_proj"] = "rowwise"
    plan[f"{layers}.*.self_attn.q_norm"] = "replicated_with_grad_allreduce"  # Qwen3
    plan[f"{layers}.*.self_attn.k_norm"] = "replicated_with_grad_allreduce"
    plan[f"{layers}.*.mlp.gate_proj"] = "colwise"
    plan[f"{layers}.*.mlp.up_proj"] = "colwise"
    plan[f"{layers}.*.mlp.down_proj"] = "rowwise"
    plan[lm_head] = "colwise_gather_output"
    return plan


def matching_names(names: Iterable[str], key: str) -> list[str]:
    """The dotted ``names`` that plan key ``key`` selects (``fnmatch`` per dotted atom)."""
    atoms = key.split(".")
    out = []
    for name in names:
        parts = name.split(".") if name else []
        if len(parts) == len(atoms) and all(
            fnmatch(p, a) for p, a in zip(parts, atoms, strict=True)
        ):
            out.append(name)
    return out


def matching_modules(model: nn.Module, key: str) -> list[str]:
    """Names of the modules of ``model`` that plan key ``key`` selects."""
    return matching_names((name for name, _ in model.named_modules()), key)


def sequence_parallel_plan(
    model: nn.Module, hf_plan: dict[str, str], lm_head: str | None
) -> dict[str, ParallelStyle]:
    """Rewrite a (resolved) Hugging Face plan for sequence parallelism; see the module docstring."""
    layer_keys = [k for k in hf_plan if ".*." in k]
    containers = {k.split(".*.")[0] for k in layer_keys}
    if len(containers) != 1:
        raise NotImplementedError(
            "sequence parallelism needs one stack of decoder layers in the plan "
            f"(entries like 'model.layers.*.self_attn.q_proj'); found {sorted(containers) or 'none'}"
        )
    layers = containers.pop()
    base = layers.rpartition(".")[0]
    first = matching_modules(model, f"{layers}.*")
    if not first:
        raise NotImplementedError(f"sequence parallelism: no modules under {layers!r}")
    layer = model.get_submodule(first[0])
    parallel_children = {k.split(".*.")[1].split(".")[0] for k in layer_keys}
    for k in layer_keys:
        if hf_plan[k] == "rowwise" and k.split(".*.")[1].count(".") != 1:
            raise NotImplementedError(f"sequence parallelism: unexpected rowwise entry {k!r}")

    plan: dict[str, ParallelStyle] = {}
    for key, style in hf_plan.items():
        if key in layer_keys:
            if style == "rowwise":  # the block's output projection: reduce-scatter to S
                plan[key] = RowwiseParallel(output_layouts=Shard(1), use_local_output=False)
            elif (translated := style_from_hf(key, style)) is not None:
                plan[key] = translated
        elif style in ("embedding_rowwise", "embedding_colwise"):
            cls = RowwiseParallel if style == "embedding_rowwise" else ColwiseParallel
            plan[key] = cls(
                input_layouts=Replicate(), output_layouts=Shard(1), use_local_output=False
            )
        elif key != lm_head:
            raise NotImplementedError(
                f"sequence parallelism: don't know how to lay out plan entry {key!r}: {style!r}"
            )
    if not any(hf_plan[k].startswith("embedding") for k in hf_plan if k not in layer_keys):
        raise NotImplementedError("sequence parallelism needs the input embedding in the plan")

    for child, module in layer.named_children():
        if child in parallel_children:
            plan[f"{layers}.*.{child}"] = GatherSequence()
        elif "norm" in child and not list(module.children()):
            plan[f"{layers}.*.{child}"] = SequenceParallel()
    norms = [
        n
        for n, m in (model.get_submodule(base) if base else model).named_children()
        if "norm" in n and not list(m.children())
    ]
    if len(norms) != 1 or lm_head is None:
        raise NotImplementedError(
            "sequence parallelism needs one final norm next to the decoder layers and an "
            f"output projection (found norms {norms}, output projection {lm_head!r})"
        )
    plan[f"{base}.{norms[0]}" if base else norms[0]] = SequenceParallel(use_local_output=True)
    plan[lm_head] = ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate())
    return plan


def plan_summary(plan: dict[str, ParallelStyle]) -> dict[str, str]:
    """``{key: repr(style)}``: a plan in a printable, comparable form."""
    return {k: repr(v) for k, v in plan.items()}


__all__ = [
    "HF_STYLES",
    "GatherSequence",
    "ReplicateWithGradAllReduce",
    "builtin_decoder_plan",
    "matching_modules",
    "matching_names",
    "plan_summary",
    "sequence_parallel_plan",
    "style_from_hf",
]
