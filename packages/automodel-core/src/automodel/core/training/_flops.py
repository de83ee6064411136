"""Training FLOPs per token of dense decoder LMs, model FLOPs utilization, and GPU peak FLOPs."""

from __future__ import annotations

from typing import Any

import torch

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
