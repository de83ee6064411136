"""`MoEConfig`: the shape, routing and balancing of one Mixture-of-Experts layer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SCORE_FUNCS = ("softmax", "sigmoid", "sqrtsoftplus")
ACTIVATIONS = ("swiglu", "geglu", "swiglu_oai", "gelu", "relu2")
GATED_ACTIVATIONS = ("swiglu", "geglu", "swiglu_oai")
BALANCING = ("none", "aux_loss", "bias")
BACKENDS = ("auto", "grouped_mm", "loop")
ROUTINGS = ("learned", "hash", "balanced")


@dataclass
class MoEConfig:
    """One MoE layer: sizes, routing, activation, load balancing and the expert matmul backend.

    Routing is dropless (no capacity factor, no token is ever dropped): every token is computed
    by exactly ``experts_per_token`` routed experts, plus the shared experts if any.

    Routing, per token: ``logits = x @ gate.weight.T (+ gate.bias)`` in float32;
    ``scores = softmax(logits)``, ``sigmoid(logits)`` or ``sqrt(softplus(logits))``
    (``sqrtsoftplus``, DeepSeek-V4); the experts are chosen by top-k over
    ``scores + e_score_correction_bias`` (when there is such a bias), restricted to the
    ``topk_groups`` best of ``n_groups`` expert groups (a group's score is the sum of its two best
    experts) when ``n_groups > 1``; the combine weights are the *unbiased* scores of the chosen
    experts, divided by their sum when ``norm_topk_prob``, times ``route_scale``.

    Balancing:
      * ``"aux_loss"``: the Switch-Transformer loss ``E * sum_e f_e * P_e`` over all tokens of the
        forward pass (batch level, the same formula as transformers' ``load_balancing_loss_func``),
        where ``f_e`` is the fraction of tokens routed to expert ``e`` (summing to ``k``) and
        ``P_e`` the mean routing probability (sigmoid and sqrtsoftplus scores are normalised to
        sum to one).
        It is multiplied by ``aux_loss_coeff``; collect it with ``moe_aux_loss(model)``.
      * ``"bias"``: auxiliary-loss-free balancing (DeepSeek-V3): a per-expert bias added to the
        scores for selection only, moved by ``bias_update_rate * sign(mean_load - load)`` on
        each ``update_moe_bias(model)`` call (once per optimizer step).
      * ``"none"``: no balancing (a pre-existing ``e_score_correction_bias`` is still applied).

    Hash routing (``routing="hash"``, DeepSeek-V4's first layers): token ``t``'s experts are the
    row ``tid2eid[input_ids[t]]`` of a fixed ``[hash_vocab_size, k]`` table (a router buffer)
    instead of the top-k of its scores; the scores still give the combine weights (gathered,
    renormalised, scaled as above). The block's forward then needs the token ids. The choice
    ignores the scores, so nothing balances a hash layer: it has no selection bias and no aux
    loss (its load is still counted in the metrics).

    Experts: ``down(act(in(x)))`` with ``in`` = ``gate_up_proj`` for the gated activations
    (``act(gate) * up``; swiglu: SiLU, geglu: GELU, swiglu_oai: ``gate * sigmoid(alpha * gate)
    * (up + 1)``) or ``up_proj`` for gelu and relu2; each projection adds a per-expert bias
    with ``expert_bias``.
    """

    hidden_size: int
    moe_intermediate_size: int
    n_routed_experts: int
    experts_per_token: int
    n_shared_experts: int = 0
    shared_intermediate_size: int | None = None  # default: n_shared_experts * moe_intermediate_size
    shared_expert_gate: bool = False  # Qwen2-MoE: shared output scaled by sigmoid(Linear(x))
    score_func: str = "softmax"
    n_groups: int = 1
    topk_groups: int = 1
    route_scale: float = 1.0
    norm_topk_prob: bool = True
    router_bias: bool = False  # a learned bias on the router logits (nn.Linear bias)
    score_correction_bias: bool = False  # keep an `e_score_correction_bias` buffer (DeepSeek-V3)
    activation: str = "swiglu"
    # swiglu_oai (gpt-oss): gate * sigmoid(activation_alpha * gate) * (up + 1)
    activation_alpha: float = 1.702
    # gated activations: gate clamped to <= limit and up to [-limit, limit] first (None: no clamp)
    activation_limit: float | None = None
    gate_up_interleaved: bool = False  # gate_up_proj's outputs alternate gate, up (gpt-oss)
    # a bias per expert on each projection: gate_up_proj_bias (or up_proj_bias), down_proj_bias
    expert_bias: bool = False
    # expert weights stored [E, in, out] (gpt-oss) instead of nn.Linear's [E, out, in]
    transposed_experts: bool = False
    # Nemotron 3 LatentMoE: the routed experts run at this width, between the block's
    # fc1_latent_proj [L, H] and fc2_latent_proj [H, L] (the router still sees the hidden states)
    latent_size: int | None = None
    balancing: str = "none"
    aux_loss_coeff: float = 1e-3
    bias_update_rate: float = 1e-3
    input_jitter: float = 0.0  # Mixtral router jitter: x *= U(1 - j, 1 + j) in training
    backend: str = "auto"  # expert matmuls: "grouped_mm" (torch._grouped_mm), "loop", "auto"
    # "learned": the top-k of the scores; "hash": a fixed table by token id (see above);
    # "balanced" (for throughput benchmarks): the gate is not used; token t's j-th slot goes to
    # expert (t * k + j) mod E with weight 1 / k, so every expert gets the same load
    routing: str = "learned"
    # rows of the hash router's `tid2eid` table (the vocabulary size); only with routing "hash"
    # (or "balanced", which then keeps the table unused)
    hash_vocab_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("hidden_size", "moe_intermediate_size", "n_routed_experts"):
            _positive_int(name, getattr(self, name))
        _positive_int("experts_per_token", self.experts_per_token)
        if self.experts_per_token > self.n_routed_experts:
            raise ValueError(
                f"MoEConfig.experts_per_token={self.experts_per_token} must be <= "
                f"n_routed_experts={self.n_routed_experts}"
            )
        if not isinstance(self.n_shared_experts, int) or self.n_shared_experts < 0:
            raise ValueError(
                f"MoEConfig.n_shared_experts={self.n_shared_experts!r} must be an int >= 0"
            )
        if self.shared_intermediate_size is not None:
            _positive_int("shared_intermediate_size", self.shared_intermediate_size)
        if self.latent_size is not None:
            _positive_int("latent_size", self.latent_size)
        if self.hash_vocab_size is not None:
            _positive_int("hash_vocab_size", self.hash_vocab_size)
        if self.shared_expert_gate and self.n_shared_experts == 0:
            raise ValueError("MoEConfig.shared_expert_gate=True needs n_shared_experts >= 1")
        _choice("score_func", self.score_func, SCORE_FUNCS)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("balancing", self.balancing, BALANCING)
        _choice("backend", self.backend, BACKENDS)
        _choice("routing", self.routing, ROUTINGS)
        if self.routing == "hash" and self.hash_vocab_size is None:
            raise ValueError(
                "MoEConfig.routing='hash' needs hash_vocab_size (the rows of the token-id -> "
                "experts table tid2eid)"
            )
        if self.routing == "learned" and self.hash_vocab_size is not None:
            raise ValueError(
                f"MoEConfig.hash_vocab_size={self.hash_vocab_size} is the table of hash routing: "
                "set routing='hash', or leave hash_vocab_size None"
            )
        _positive_int("n_groups", self.n_groups)
        _positive_int("topk_groups", self.topk_groups)
        if self.n_routed_experts % self.n_groups:
            raise ValueError(
                f"MoEConfig.n_groups={self.n_groups} must divide "
                f"n_routed_experts={self.n_routed_experts}"
            )
        if self.topk_groups > self.n_groups:
            raise ValueError(
                f"MoEConfig.topk_groups={self.topk_groups} must be <= n_groups={self.n_groups}"
            )
        if self.n_groups > 1:
            per_group = self.n_routed_experts // self.n_groups
            if self.topk_groups * per_group < self.experts_per_token:
                raise ValueError(
                    f"MoEConfig.topk_groups={self.topk_groups} groups of {per_group} experts hold "
                    f"fewer than experts_per_token={self.experts_per_token} experts"
                )
        if self.activation_limit is not None:
            _positive_number("activation_limit", self.activation_limit)
        for name in ("activation_limit", "gate_up_interleaved"):
            if getattr(self, name) not in (None, False) and not self.gated:
                raise ValueError(
                    f"MoEConfig.{name}={getattr(self, name)!r} needs a gated activation "
                    f"{list(GATED_ACTIVATIONS)}, not activation={self.activation!r}"
                )
        _positive_number("activation_alpha", self.activation_alpha)
        for name in ("route_scale", "aux_loss_coeff", "bias_update_rate", "input_jitter"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"MoEConfig.{name}={value!r} must be a number >= 0")
        if self.input_jitter >= 1:
            raise ValueError(f"MoEConfig.input_jitter={self.input_jitter} must be < 1")

    @property
    def gated(self) -> bool:
        """Whether the experts are gated (``gate_up_proj``) rather than plain (``up_proj``)."""
        return self.activation in GATED_ACTIVATIONS

    @property
    def expert_dim(self) -> int:
        """Input and output width of the routed experts (``latent_size`` when set)."""
        return self.hidden_size if self.latent_size is None else self.latent_size

    @property
    def has_selection_bias(self) -> bool:
        """Whether the router keeps an ``e_score_correction_bias`` buffer (never a hash layer)."""
        if self.hash_vocab_size is not None:
            return False
        return self.score_correction_bias or self.balancing == "bias"

    @property
    def shared_size(self) -> int:
        """Intermediate size of the shared-expert MLP (0 when there is none)."""
        if self.n_shared_experts == 0:
            return 0
        if self.shared_intermediate_size is not None:
            return self.shared_intermediate_size
        return self.n_shared_experts * self.moe_intermediate_size

    def replace(self, **changes: Any) -> MoEConfig:
        """A copy with ``changes`` applied (unknown field names are errors)."""
        check_fields(changes)
        return dataclasses.replace(self, **changes)


def check_fields(changes: dict[str, Any]) -> None:
    """Raise ``TypeError`` naming any key of ``changes`` that is not a ``MoEConfig`` field."""
    known = [f.name for f in dataclasses.fields(MoEConfig)]
    unknown = sorted(set(changes) - set(known))
    if unknown:
        raise TypeError(f"unknown MoEConfig field(s) {unknown}; the fields are {known}")


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"MoEConfig.{name}={value!r} must be an int >= 1")


def _positive_number(name: str, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"MoEConfig.{name}={value!r} must be a number > 0")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"MoEConfig.{name}={value!r} is not one of {list(allowed)}")
