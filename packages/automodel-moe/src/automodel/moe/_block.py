"""The MoE block: router + grouped routed experts + optional shared experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from automodel.moe._config import MoEConfig
from automodel.moe._experts import GroupedExperts, activate, activate_gated
from automodel.moe._router import BlockBiasRouter, StaticsBiasRouter, TopKRouter

BIAS_HOMES = ("router", "block", "statics")


class SharedMLP(nn.Module):
    """A dense MLP with HF names ``gate_proj``/``up_proj``/``down_proj`` (no biases).

    ``fused``: the gate and up projections are one ``gate_up_proj`` (gate rows first), as in
    MiniMax-M3's shared expert.
    """

    def __init__(self, config: MoEConfig, fused: bool = False) -> None:
        super().__init__()
        self.config = config  # its activation
        self.fused = fused
        hidden_size, intermediate_size = config.hidden_size, config.shared_size
        if fused and not config.gated:
            raise ValueError(
                f"a fused gate_up_proj needs a gated activation, not {config.activation!r}"
            )
        if fused:
            self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        else:
            if config.gated:
                self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
            self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``down(act(gate(x)) * up(x))`` for gated activations, else ``down(act(up(x)))``."""
        if self.fused:
            h = activate_gated(*self.gate_up_proj(x).chunk(2, dim=-1), self.config)
        elif self.config.gated:
            h = activate_gated(self.gate_proj(x), self.up_proj(x), self.config)
        else:
            h = activate(self.up_proj(x), self.config)
        return self.down_proj(h)


class MoE(nn.Module):
    """Drop-in MoE block: ``forward(x [..., H]) -> [..., H]``.

    Submodules keep Hugging Face names: the router (``router_name``: ``gate``, or ``router`` for
    gpt-oss), ``experts``, and the shared MLP under ``shared_name`` (``"shared_experts"`` for
    DeepSeek, ``"shared_expert"`` with a ``shared_expert_gate`` for Qwen2-MoE), so state dicts
    match the HF blocks key for key. ``bias_home``: where the selection bias is kept, the
    router's ``e_score_correction_bias`` (``"router"``), the block's (``"block"``: MiniMax-M2,
    Hy3) or the router's ``moe_statics.e_score_correction_bias`` ``[1, E]`` (``"statics"``:
    ERNIE-4.5). ``shared_fused``: the shared MLP's gate and up are one ``gate_up_proj``. With
    ``config.latent_size`` the experts run between ``fc1_latent_proj`` and ``fc2_latent_proj``
    (Nemotron 3). ``return_router_scores``: return ``(output, topk_weights [T, k])``, as the
    gpt-oss block does for its decoder layer. ``forward``'s ``input_ids`` reach the router,
    which reads them for hash routing (DeepSeek-V4's decoder layers pass them).
    """

    def __init__(
        self,
        config: MoEConfig,
        shared_name: str = "shared_experts",
        bias_home: str = "router",
        router_name: str = "gate",
        return_router_scores: bool = False,
        shared_fused: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.router_name = router_name
        self.return_router_scores = return_router_scores
        if bias_home not in BIAS_HOMES:
            raise ValueError(f"MoE bias_home={bias_home!r} is not one of {list(BIAS_HOMES)}")
        router: TopKRouter
        if bias_home == "block" and config.has_selection_bias:
            router = BlockBiasRouter(config, self)
            self.register_buffer("e_score_correction_bias", torch.zeros(config.n_routed_experts))
        elif bias_home == "statics" and config.has_selection_bias:
            router = StaticsBiasRouter(config)
        else:
            router = TopKRouter(config)
        self.add_module(router_name, router)
        self.experts = GroupedExperts(config)
        if config.latent_size is not None:
            self.fc1_latent_proj = nn.Linear(config.hidden_size, config.latent_size, bias=False)
            self.fc2_latent_proj = nn.Linear(config.latent_size, config.hidden_size, bias=False)
        self.shared_name = shared_name if config.n_shared_experts else None
        if self.shared_name is not None:
            self.add_module(self.shared_name, SharedMLP(config, fused=shared_fused))
        if config.shared_expert_gate:
            self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)

    @property
    def topk_router(self) -> TopKRouter:
        """The router, whatever its HF name (``gate`` or ``router``)."""
        return getattr(self, self.router_name)

    def forward(
        self, hidden_states: torch.Tensor, input_ids: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Route each token to its top-k experts, add the shared experts' output."""
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        routed_in = x
        jitter = self.config.input_jitter
        if self.training and jitter > 0:
            routed_in = x * torch.empty_like(x).uniform_(1.0 - jitter, 1.0 + jitter)
        _, topk_weights, topk_ids = self.topk_router(routed_in, input_ids)
        if self.config.latent_size is None:
            out = self.experts(routed_in, topk_ids, topk_weights)
        else:
            latent = self.experts(self.fc1_latent_proj(routed_in), topk_ids, topk_weights)
            out = self.fc2_latent_proj(latent)
        if self.shared_name is not None:
            shared = getattr(self, self.shared_name)(x)
            if self.config.shared_expert_gate:
                shared = F.sigmoid(self.shared_expert_gate(x)) * shared
            out = out + shared
        out = out.view(shape)
        return (out, topk_weights) if self.return_router_scores else out
