"""Tiny configs for every causal-LM family in transformers, built generically.

```python
from tiny_configs import CAUSAL_LM_TYPES, tiny_config

config = tiny_config("deepseek_v3")    # a DeepseekV3Config with 2 layers, hidden 64, 4 experts
model = transformers.AutoModelForCausalLM.from_config(config)
```

As transformers' own model testers do, a tiny config starts from the config class's defaults
(`AutoConfig.for_model(model_type)`) and shrinks every size. Here the shrinking is one table of
rules over attribute names (`SIZE_RULES`: hidden 64, FFN 64, 2 layers, 4 heads, 2 KV heads,
head dim 16, vocabulary 128, 4 experts with top-2, 256 positions, window 16, small MLA ranks
and SSM sizes), applied to the config's `to_dict()` and to every sub-config in it; a value is
only ever lowered (`min(value, rule)`), so an attribute that is already small stays as it is,
except head dims, which are set (heads x head_dim must make the hidden size). Equalities the
defaults hold between sizes hold afterwards too (`_keep_relations`: KV heads equal to the heads,
DeepSeek's head_dim equal to its rope dim, qk_head_dim = nope + rope, Zamba's 2 x hidden
attention width), and a few sizes some defaults leave None are filled (`FILL_NONE`).
`FAMILY_OVERRIDES` holds the few per-family settings no rule can derive, each with its reason.

Layers: the layers kept are the first of every distinct kind (the per-layer lists such as
`layer_types` or `mlp_layer_types`, the layer-index lists such as `mlp_only_layers`, the
heterogeneous `per_layer_config`), at least 2, so a hybrid model keeps each of its layer kinds:
Gemma 4 keeps a sliding and a full attention layer, whose own `head_dim` override (512 against
256) becomes 32 against 16. Per-layer lists are cut to the kept layers, index lists renumbered,
`per_layer_config` re-keyed; heterogeneous configs stay heterogeneous.

Special tokens: pad/bos/eos become 0/2/3, the ids of the repo's tiny tokenizer
(examples/llm_finetune/assets/tiny_tokenizer, 32 tokens); any other special-token id outside
the new vocabulary moves to the top of it (127, 126, ...).

Composite (multimodal) configs: where the family's causal-LM class takes the text config (e.g.
`llama4` -> `Llama4ForCausalLM`, a `Llama4TextConfig`) and AutoModelForCausalLM builds that
text config by itself, `tiny_config` returns the text config; where it takes the whole config (e.g. `gemma3` -> `Gemma3ForConditionalGeneration`), every
sub-config is shrunk by the same rules.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import transformers
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

# Every model type transformers' AutoModelForCausalLM knows, in its own order.
CAUSAL_LM_TYPES: list[str] = list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)

VOCAB = 128
HIDDEN = 64
FFN = 64
LAYERS = 2
MAX_LAYERS = 4  # a hybrid with more layer kinds keeps at most this many layers
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 16
POSITIONS = 256
WINDOW = 16
EXPERTS = 4
TOP_K = 2
# The tiny tokenizer's ids (examples/llm_finetune/assets/tiny_tokenizer).
TOKEN_IDS = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3, "decoder_start_token_id": 2}

# (regex over the attribute name, the largest value it keeps). First match wins; the rules
# apply to int values only (never bools), in the config and in every sub-config. A negative
# limit sets the value exactly (head dims: heads x head_dim must make the hidden size, also
# where the default head_dim is smaller, e.g. Falcon-H1's Mamba heads of 8).
SIZE_RULES: list[tuple[str, int]] = [
    # vocabularies (token-type vocabularies are tiny already; "divisible_by" is an alignment)
    (r".*divisible_by.*", 10**9),
    (r"(.*_)?vocab(_size)?(_.*)?|.*_vocab", VOCAB),
    (r"vocab_offset", VOCAB),
    # layer structure: first dense layers, periods, offsets, intervals, shared layers
    (r"first_k_dense(_replace)?|num_dense_layers|moe_layer_start_index|num_kv_shared_layers", 1),
    (r".*_offset|max_window_layers", 1),
    (r".*_period|.*_interval|.*_step|.*every_n_layers|.*sliding_window_pattern", LAYERS),
    (r"layer_group_size|n_layers_per_.*", LAYERS),
    # layer counts (the text model's and any encoder/decoder/sub-model's)
    (r"num_hidden_layers|n_layers?|num_layers(_per_stack)?|(decoder|encoder)_layers", LAYERS),
    (r"num_(decoder|encoder|global|lstm)_layers|conf_num_hidden_layers|num_blocks", LAYERS),
    # MLA (DeepSeek-style) ranks and head dims, before the generic head rules
    (r"q_lora_rank|o_lora_rank", 32),
    (r"kv_lora_rank", 16),
    (r"qk_rope_head_dim", 8),
    (r"qk_nope_head_dim|v_head_dim", HEAD_DIM),
    (r"qk_head_dim", HEAD_DIM + 8),  # nope + rope
    # SSM / Mamba / linear attention
    (r"(mamba_)?(ssm_)?(d_)?state(_size)?|mamba_d_state|ssm_state_size", 8),
    (r"(mamba_)?expand", 1),  # heads x head_dim == expand x hidden holds with 4 x 16 == 1 x 64
    (r"time_step_rank|mamba_dt_rank", 8),
    (r"(mamba_)?(n_?)?groups|mamba_ngroups|mamba_n_groups|n_group|num_expert_group|topk_group", 1),
    (r".*conv.*kernel.*|.*d_conv|conv1d_width|conv_L_cache", 4),
    (r"mamba_d_ssm", HIDDEN),
    # heads
    (r".*(kv|key_value|key)_heads|n_head_kv|kv_n_heads|multi_query_group_num", KV_HEADS),
    (r"num_query_groups", KV_HEADS),
    (r".*heads(_per_ngram)?|.*_n_heads|n_head|attention_heads|num_heads", HEADS),
    (r"rotary_dim", HEAD_DIM // 2),
    (r".*head_?dim|.*head_size|.*d_head|dim_head|kv_channels|d_kv|linear_.*_dim", -HEAD_DIM),
    (r"query_pre_attn_scalar", HEAD_DIM),
    # experts
    (r".*shared_experts|zero_expert_num", 1),
    (r"index_topk", WINDOW),  # DSA indexer: tokens each query attends to
    (r"num_experts_per_tok(en)?|.*top_?k(_experts)?|moe_k", TOP_K),
    (r"(num_|n_routed_|moe_num_|num_local_)experts|num_centroids", EXPERTS),
    # feed-forward sizes
    (
        r".*intermediate_size.*|.*ffn.*|d_ff|dff|dim_ff|d_inner|n_inner|feed_forward_size|mlp_dim",
        FFN,
    ),
    (r"expert_ffn_hidden_size", FFN),
    # per-layer inputs, low ranks
    (r"hidden_size_per_layer_input|ple_embed_dim|.*_rank|hc_lowrank|router_hidden_size", 16),
    # hidden sizes
    (
        r".*hidden_size.*|n_embd|n_embed|d_model|.*emb(ed|edding)?_(dim|size)|word_embed_proj_dim",
        HIDDEN,
    ),
    (r"lru_width|attention_hidden_size|dim_model_base", HIDDEN),
    # positions and windows
    (r".*max_position.*|n_positions|n_ctx|max_seq_len|max_(source|target)_positions", POSITIONS),
    (r"context_length|model_max_length", POSITIONS),
    (
        r".*sliding_window(_size)?|.*window_size|local_attention(_window_len)?|keep_window_size",
        WINDOW,
    ),
    (r"attention_chunk_size", WINDOW),
]
_RULES = [(re.compile(pattern), limit) for pattern, limit in SIZE_RULES]

# Sizes some defaults leave None though every model of the family needs them (e.g. HunYuan's and
# Ministral's head_dim, Nemotron's KV heads, dots1's experts); transformers' testers set them.
FILL_NONE = {
    "head_dim": HEAD_DIM,
    "num_key_value_heads": KV_HEADS,
    "n_routed_experts": EXPERTS,
    "num_experts_per_tok": TOP_K,
}


def _zamba_layers(d: dict[str, Any]) -> None:
    # Zamba ties one shared transformer block across its hybrid layers; transformers' tied-weight
    # check needs at least two of them.
    d["layers_block_type"] = ["linear_attention", "hybrid"] * 2
    d["num_hidden_layers"] = 4


def _gpt_neo_types(d: dict[str, Any]) -> None:
    # GPT-Neo gives its layer pattern as [[kinds, repeats]]; the repeats must make num_layers.
    d["attention_types"] = [[["global", "local"], 1]]
    d["attention_layers"] = ["global", "local"]


# The few things no rule can derive, by model type; each says why.
FAMILY_OVERRIDES: dict[str, Callable[[dict[str, Any]], None]] = {
    "gpt_neo": _gpt_neo_types,
    "zamba": _zamba_layers,
}


def size_limit(name: str) -> int | None:
    """The largest value `SIZE_RULES` keeps for an attribute name (None: not a size)."""
    if name.endswith(("_token_id", "_token_index", "_id")):
        return None
    for pattern, limit in _RULES:
        if pattern.fullmatch(name):
            return limit
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shrink_value(name: str, value: Any) -> Any:
    limit = size_limit(name)
    if limit is None:
        return value
    if _is_int(value) and value > 0:
        return -limit if limit < 0 else min(value, limit)
    if isinstance(value, list) and value and all(_is_int(v) and v > 0 for v in value):
        return [-limit if limit < 0 else min(v, limit) for v in value]  # gemma3n's per-layer FFN
    if value is None and name in FILL_NONE:
        return FILL_NONE[name]
    return value


def _layer_count_key(d: dict[str, Any]) -> str | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers"):
        if _is_int(d.get(key)) and d[key] > 0:
            return key
    return None


_INDEX_NAME = re.compile(r".*(layer|idx|ids|indexes|indices).*")


def _is_index_list(name: str, value: Any, layers: int) -> bool:
    """A list of layer indices (e.g. mlp_only_layers=[0, 3]): increasing ints below `layers`."""
    if not (_INDEX_NAME.fullmatch(name) and isinstance(value, list)):
        return False
    if not all(_is_int(v) and 0 <= v < layers for v in value):
        return False
    return all(a < b for a, b in itertools.pairwise(value))


def _per_layer_lists(d: dict[str, Any], layers: int) -> tuple[list[str], list[str]]:
    """(names of per-layer lists, names of layer-index lists) in a config dict."""
    per_layer, index = [], []
    for name, value in d.items():
        if name in ("architectures", "id2label", "label2id") or not isinstance(value, list):
            continue
        if _is_index_list(name, value, layers) and len(value) != layers:
            index.append(name)
        elif len(value) == layers and layers > 1:
            per_layer.append(name)
    return per_layer, index


def _layer_overrides(d: dict[str, Any]) -> dict[int, dict[str, Any]]:
    raw = d.get("per_layer_config") or {}
    return {int(k): dict(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def kept_layers(d: dict[str, Any], layers: int) -> list[int]:
    """The layers to keep: the first of every distinct kind, at least `LAYERS`, sorted."""
    per_layer, index = _per_layer_lists(d, layers)
    overrides = _layer_overrides(d)

    def kind(i: int) -> str:
        parts = [repr(d[name][i]) for name in per_layer]
        parts += [str(i in d[name]) for name in index]
        parts.append(repr(sorted(overrides.get(i, {}).items())))
        return "|".join(parts)

    kept: list[int] = []
    seen: set[str] = set()
    for i in range(layers):
        k = kind(i)
        if k not in seen:
            seen.add(k)
            kept.append(i)
    kept = kept[:MAX_LAYERS]
    i = 0
    while len(kept) < min(LAYERS, layers):
        if i not in kept:
            kept.append(i)
        i += 1
    return sorted(kept)


def _scaled(name: str, value: Any, base_before: Any, base_after: Any) -> Any:
    """A per-layer override shrunk like the global value, keeping its ratio to it."""
    small = _shrink_value(name, value)
    if (
        _is_int(value) and _is_int(base_before) and _is_int(base_after)
        and base_before > 0 and value != base_before and small == base_after
    ):  # fmt: skip
        return max(1, round(base_after * value / base_before))
    return small


_NOT_CONFIGS = ("per_layer_config", "id2label", "label2id", "task_specific_params")


def _shrink_layer(
    attrs: dict[str, Any], original: dict[str, Any], shrunk: dict[str, Any]
) -> dict[str, Any]:
    """One layer's `per_layer_config` overrides, shrunk and kept apart from the global values."""
    new = {k: _scaled(k, v, original.get(k), shrunk.get(k)) for k, v in attrs.items()}
    layer = {**shrunk, **new}
    _keep_relations({**original, **attrs}, layer, own=set(attrs))
    return {k: layer[k] for k in attrs}


def shrink_dict(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict (from `to_dict()`) with every size shrunk, sub-configs included."""
    d = dict(d)
    original = dict(d)
    for name, value in list(d.items()):
        if isinstance(value, dict) and name not in _NOT_CONFIGS:
            d[name] = shrink_dict(value)  # a sub-config (text_config, attn_config, rope, ...)
        elif name != "per_layer_config":
            d[name] = _shrink_value(name, value)
    layer_key = _layer_count_key(original)
    if layer_key is not None:
        layers = original[layer_key]
        kept = kept_layers(original, layers)
        per_layer, index = _per_layer_lists(original, layers)
        for name in per_layer:
            d[name] = [d[name][i] for i in kept]
        for name in index:
            d[name] = [kept.index(i) for i in original[name] if i in kept]
        for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers"):
            if _is_int(original.get(key)) and original[key] == layers:
                d[key] = len(kept)
    _keep_relations(original, d, own={"head_dim", "qk_head_dim"})
    if layer_key is not None and _layer_overrides(original):
        d["per_layer_config"] = {
            str(kept.index(i)): _shrink_layer(attrs, original, d)
            for i, attrs in _layer_overrides(original).items()
            if i in kept
        }
    if "is_decoder" in d:
        d["is_decoder"] = True  # the ForCausalLM heads of encoder families need it
    _retarget_token_ids(d)
    return d


_HEAD_KEYS = ("num_attention_heads", "n_head", "n_heads", "num_heads")


def _keep_relations(original: dict[str, Any], d: dict[str, Any], own: set[str]) -> None:
    """Equalities between sizes that held in the original hold in `d` too.

    KV heads equal to the heads stay equal (multi-head stays multi-head); a head_dim equal to
    qk_rope_head_dim stays so (DeepSeek's head_dim is its rope dim); qk_head_dim and a head_dim
    equal to qk_nope + qk_rope stay the sum (dots3's sliding layers). `own`: the attributes `d`
    may change to restore a sum (a layer's overrides; the derived ones for the global config).
    """
    _keep_head_grouping(original, d)
    _keep_hidden_multiples(original, d)
    rope, nope = "qk_rope_head_dim", "qk_nope_head_dim"
    if not all(_is_int(original.get(k)) and _is_int(d.get(k)) for k in (rope, nope)):
        return
    total = original[rope] + original[nope]
    if original.get("head_dim") == original[rope] and "head_dim" in own:
        d["head_dim"] = d[rope]
    for name in ("qk_head_dim", "head_dim"):
        if original.get(name) == total and original[name] != original[rope]:
            if name in own:
                d[name] = d[rope] + d[nope]
            elif nope in own and d.get(name, 0) > d[rope]:
                d[nope] = d[name] - d[rope]


def _keep_hidden_multiples(original: dict[str, Any], d: dict[str, Any]) -> None:
    """An attention width that was k x hidden_size stays k x the new one (Zamba's attention runs
    on the hidden state concatenated with the embeddings: 2 x hidden), with the head_dim that
    made it. Other widths are left at the hidden size: they name another module's width
    (e.g. BLT's hidden_size_global is its global model's hidden_size)."""
    hidden, width = original.get("hidden_size"), original.get("attention_hidden_size")
    if not (_is_int(hidden) and _is_int(width) and _is_int(d.get("hidden_size")) and hidden > 0):
        return
    if width != hidden and width % hidden == 0 and width // hidden <= 8:
        d["attention_hidden_size"] = width // hidden * d["hidden_size"]
        heads = next((h for h in _HEAD_KEYS if _is_int(original.get(h))), None)
        for dim in ("head_dim", "attention_head_dim"):
            if heads and _is_int(original.get(dim)) and original[dim] * original[heads] == width:
                d[dim] = d["attention_hidden_size"] // d[heads]


def _keep_head_grouping(original: dict[str, Any], d: dict[str, Any]) -> None:
    """Multi-head attention stays multi-head: KV heads equal to the heads stay equal to them."""
    for name, value in original.items():
        if not (_is_int(value) and size_limit(name) == KV_HEADS and "head" in name):
            continue
        prefix = name[: name.index("num_")] if "num_" in name else ""
        for heads in (f"{prefix}num_attention_heads", *_HEAD_KEYS):
            if _is_int(original.get(heads)):
                if original[heads] == value:
                    d[name] = d[heads]
                break


def _retarget_token_ids(d: dict[str, Any]) -> None:
    vocab = d.get("vocab_size")
    text = d.get("text_config")
    if vocab is None and isinstance(text, dict):  # a composite config's ids index the text vocab
        vocab = text.get("vocab_size")
    if not _is_int(vocab):
        return
    spare = iter(range(vocab - 1, max(TOKEN_IDS.values()), -1))
    for name, value in list(d.items()):
        if name in TOKEN_IDS and value is not None:
            d[name] = TOKEN_IDS[name] if not isinstance(value, list) else [TOKEN_IDS[name]]
        elif name.endswith(("_token_id", "_token_index", "_token_ids")):
            if _is_int(value) and value >= vocab:
                d[name] = next(spare)
            elif isinstance(value, list) and any(_is_int(v) and v >= vocab for v in value):
                d[name] = [next(spare) for _ in value]


def causal_lm_config(config: PretrainedConfig) -> PretrainedConfig:
    """The config the family's causal-LM class takes: the whole config or its text config."""
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
    model_class = getattr(transformers, name, None) if name else None
    wanted = getattr(model_class, "config_class", None)
    if wanted is None or isinstance(config, wanted):
        return config
    text = config.get_text_config(decoder=True)
    # only where AutoModelForCausalLM builds the text config by itself (llama4_text: yes; mllama's
    # text config: no, MllamaForCausalLM is reached through the mllama config)
    buildable = type(text) in transformers.MODEL_FOR_CAUSAL_LM_MAPPING
    return text if isinstance(text, wanted) and buildable else config


_DROP = ("transformers_version", "model_type", "_name_or_path", "architectures")


def tiny_config(model_type: str) -> PretrainedConfig:
    """A tiny config of `model_type` (see the module docstring), from the class defaults."""
    config = causal_lm_config(AutoConfig.for_model(model_type))
    d = shrink_dict(config.to_dict())
    override = FAMILY_OVERRIDES.get(model_type)
    if override is not None:
        override(d)
    kwargs = {k: v for k, v in d.items() if k not in _DROP}
    return type(config)(**kwargs)
