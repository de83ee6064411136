"""Training FLOPs per token of any causal LM, model FLOPs utilization, and GPU peak FLOPs."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger("automodel.core.training")

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s per GPU, matched in order against
# torch.cuda.get_device_name(); more specific names come first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
)


def _text_config(hf_config: Any) -> Any:
    get_text_config = getattr(hf_config, "get_text_config", None)
    return get_text_config() if callable(get_text_config) else hf_config


def dense_decoder_flops_per_token(hf_config: Any, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token of a dense decoder LM, counted matmul by matmul.

    With h = hidden_size, L = num_hidden_layers, a = num_attention_heads,
    k = num_key_value_heads (default a), d = head_dim (default h / a), I = intermediate_size,
    V = vocab_size, s = seq_len, and 2 FLOPs per multiply-add, the forward pass per token is

        L * ( 2*h*a*d           q projection
            + 2 * 2*h*k*d       k and v projections (GQA: k heads)
            + 2*a*d*h           o projection
            + 2 * 2*a*d*s       scores q.k^T and the weighted sum of v, over all s positions
            + 3 * 2*h*I )       SwiGLU MLP: gate, up and down projections
        + 2*h*V                 LM head

    and training is 3x the forward (the backward pass costs twice the forward). Attention is
    counted over the full `seq_len` (no causal halving), as in the usual MFU convention;
    norms, activations, softmax, embedding lookups and the optimizer are not counted.
    """
    cfg = _text_config(hf_config)
    names = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "vocab_size",
    )
    missing = [name for name in names if getattr(cfg, name, None) is None]
    if missing:
        raise ValueError(
            f"{type(cfg).__name__} has no {', '.join(missing)}; dense_decoder_flops_per_token "
            "needs a Llama-style decoder config"
        )
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    h = cfg.hidden_size
    n_layers = cfg.num_hidden_layers
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or h // heads
    inter = cfg.intermediate_size
    attn_proj = (
        2 * h * heads * head_dim + 2 * 2 * h * kv_heads * head_dim + 2 * heads * head_dim * h
    )
    attn_scores = 2 * 2 * heads * head_dim * seq_len
    mlp = 3 * 2 * h * inter
    forward = n_layers * (attn_proj + attn_scores + mlp) + 2 * h * cfg.vocab_size
    return float(3 * forward)


# How far back each layer type's attention scores reach (None: no quadratic attention term);
# the names are those of transformers' `layer_types` (configuration_utils.ALLOWED_LAYER_TYPES).
_WINDOW_ATTR = {
    "sliding_attention": "sliding_window",
    "hybrid_sliding": "sliding_window",
    "window_attention": "sliding_window",
    "reference_sliding_attention": "sliding_window",
    "chunked_attention": "attention_chunk_size",
}
_FULL_SPAN = (
    "full_attention",
    "hybrid",
    "indexed_attention",
    "compressed_sparse_attention",
    "heavily_compressed_attention",
    "minimax_m3_sparse",
)
# Experts per token, as configs name it; a bare `top_k` is trusted on a router or MoE block
# only (on a config it may be a sampling setting).
_TOP_K = (
    "num_experts_per_tok",
    "num_experts_per_token",
    "experts_per_token",
    "n_activated_experts",
    "moe_topk",
    "moe_top_k",
    "moe_k",
)


def training_flops_per_token(model: nn.Module, seq_len: int) -> float | None:
    """Training (forward + backward) FLOPs per token of any causal LM, or None when unknowable.

    The forward pass per token is 2 FLOPs per weight a token is multiplied with, plus the
    attention scores:

    * weights: every parameter of two or more dimensions outside embedding lookups, once (tied
      weights count once), plus the LM head when it shares its weight with the embedding;
      under a module named `experts` only `top_k / n_experts` of them (the active experts);
    * attention, per layer, read from that layer's config (transformers' `per_layer_config`
      for heterogeneous configs, `layer_types` for hybrids): `2 * heads * s * (d_qk + d_v)`
      with `s` the positions a token attends to: `seq_len`, or at most the sliding window
      or chunk; recurrent, convolutional and linear-attention layers add no such term.

    Training is 3x the forward. For a Llama-style model this equals
    `dense_decoder_flops_per_token` exactly. For other designs it is a documented
    approximation: elementwise work (norms, SSM scans, activations) is left out, and sparse
    attention variants are counted as full attention.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    config = getattr(model, "config", None)
    text = _text_config(config) if config is not None else None
    weights = _active_matmul_weights(model, text)
    if weights is None:
        return None
    attention = _attention_flops(text, seq_len) if text is not None else 0.0
    return float(3 * (2 * weights + attention))


def _active_matmul_weights(model: nn.Module, text_config: Any) -> float | None:
    """Weights each token is multiplied with; None when experts exist but top-k is unknown."""
    lookups: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding | nn.EmbeddingBag):
            lookups.update(id(p) for p in module.parameters(recurse=False))
    experts = {
        name: module
        for name, module in model.named_modules()
        if name.rpartition(".")[2] == "experts"
    }
    total, seen = 0.0, set(lookups)
    for prefix, module in experts.items():
        params = [p for p in module.parameters() if id(p) not in seen and p.dim() >= 2]
        if not params:
            continue
        count = _expert_count(module, params)
        top_k = _top_k(text_config, model.get_submodule(prefix.rpartition(".")[0]))
        if top_k is None:
            log.warning(
                "no FLOPs per token (so no MFU): %s holds %d experts and the config names no "
                "top-k (%s)", prefix, count, ", ".join(_TOP_K),
            )  # fmt: skip
            return None
        total += sum(p.numel() for p in params) * min(top_k, count) / count
        seen.update(id(p) for p in params)
    for param in model.parameters():
        if id(param) not in seen and param.dim() >= 2:
            total += param.numel()
            seen.add(id(param))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and id(weight) in lookups:
        total += weight.numel()  # tied to the embedding, yet multiplied with every token
    return total


def _expert_count(module: nn.Module, params: list[torch.Tensor]) -> int:
    """Experts as a list of modules (one per expert) or stacked in 3-d weights (experts first)."""
    children = list(module.children())
    if len(children) > 1 and not any(p.dim() >= 3 for p in module.parameters(recurse=False)):
        return len(children)
    stacked = [p for p in params if p.dim() >= 3]
    return stacked[0].shape[0] if stacked else 1


def _top_k(text_config: Any, block: nn.Module) -> int | None:
    """Experts per token from the config, else from the MoE block or its router."""
    modules = [block, *(getattr(block, name, None) for name in ("gate", "router"))]
    places = [(text_config, _TOP_K), (getattr(block, "config", None), _TOP_K)]
    places += [(module, ("top_k", *_TOP_K)) for module in modules]
    for place, names in places:
        for name in names:
            value = _read(place, name)
            if isinstance(value, int) and value > 0:
                return value
    return None


def _attention_flops(config: Any, seq_len: int) -> float:
    """The attention score FLOPs of one token's forward pass, summed layer by layer."""
    layers = _read(config, "num_hidden_layers")
    if not isinstance(layers, int):
        return 0.0
    types = _read(config, "layer_types")
    per_layer = getattr(config, "per_layer_config", None)
    total = 0.0
    for i in range(layers):
        layer = per_layer[i] if per_layer is not None else config
        kind = types[i] if isinstance(types, list | tuple) and i < len(types) else "full_attention"
        if kind in _WINDOW_ATTR:
            window = _read(layer, _WINDOW_ATTR[kind])
            span = min(seq_len, window) if isinstance(window, int) and window > 0 else seq_len
        elif kind in _FULL_SPAN:
            span = seq_len
        else:
            continue
        heads = _read(layer, "num_attention_heads")
        if not isinstance(heads, int) or heads < 1:
            continue
        hidden = _read(layer, "hidden_size")
        head_dim = _read(layer, "head_dim") or (hidden // heads if isinstance(hidden, int) else 0)
        nope, rope = _read(layer, "qk_nope_head_dim"), _read(layer, "qk_rope_head_dim")
        d_qk = nope + rope if isinstance(nope, int) and isinstance(rope, int) else head_dim
        d_v = _read(layer, "v_head_dim") or head_dim
        total += 2 * heads * span * (d_qk + d_v)
    return total


def _read(obj: Any, name: str) -> Any:
    """An attribute, or None; a heterogeneous config's per-layer attribute read globally is None."""
    if obj is None:
        return None
    try:
        return getattr(obj, name, None)
    except RuntimeError:  # transformers' AmbiguousGlobalPerLayerAttributeError
        return None


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilization as a fraction, or None when the peak is unknown.

    Pass per-GPU throughput with a per-GPU peak (or totals for both).
    """
    if not peak_flops:
        return None
    return tokens_per_second * flops_per_token / peak_flops


def peak_flops_for_device(device_name: str | None = None) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU by name (default: the current CUDA device); None if unknown or CPU."""
    if device_name is None:
        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None
