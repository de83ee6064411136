"""Top-k router with group-limited routing, auxiliary-loss and bias (aux-loss-free) balancing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from automodel.moe._config import MoEConfig


class TopKRouter(nn.Module):
    """Scores experts per token and picks ``experts_per_token`` of them (see ``MoEConfig``).

    Parameters keep the Hugging Face names: ``weight`` ``[E, H]``, optional ``bias`` ``[E]``,
    the persistent buffer ``e_score_correction_bias`` ``[E]`` (the balancing bias) and, for hash
    routing, the persistent int64 buffer ``tid2eid`` ``[hash_vocab_size, k]``.
    ``forward`` returns ``(logits, topk_weights, topk_ids)`` like transformers' routers.
    """

    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.config = config
        self.num_experts = config.n_routed_experts
        self.top_k = config.experts_per_token
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size))
        self.bias = (
            nn.Parameter(torch.zeros(config.n_routed_experts)) if config.router_bias else None
        )
        self._register_selection_bias()
        if config.hash_vocab_size is not None:
            shape = (config.hash_vocab_size, config.experts_per_token)
            self.register_buffer("tid2eid", torch.zeros(shape, dtype=torch.long))
        # Token counts per expert: since the last bias update, and since the last metrics read.
        self.register_buffer("bias_counts", torch.zeros(config.n_routed_experts), persistent=False)
        self.register_buffer("load_counts", torch.zeros(config.n_routed_experts), persistent=False)
        self.aux_loss: torch.Tensor | None = None  # coefficient-weighted, of the last forward
        self.aux_loss_sum: torch.Tensor | float = 0.0  # detached, since the last metrics read
        self.aux_loss_calls = 0
        # [T] bool, True for real tokens (see routing_mask): padding then counts toward neither
        # the load nor the aux loss, as transformers' attention_mask does for its aux loss
        self.token_mask: torch.Tensor | None = None
        self.reset_parameters()

    def _register_selection_bias(self) -> None:
        """Register ``e_score_correction_bias`` (None without a selection bias)."""
        if self.config.has_selection_bias:
            self.register_buffer("e_score_correction_bias", torch.zeros(self.num_experts))
        else:
            self.e_score_correction_bias = None

    def reset_parameters(self) -> None:
        """Initialise the router weight like ``nn.Linear``, zero the biases, and fill a hash
        table so that token ``t`` takes the distinct experts ``(t * k + j) mod E``."""
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        table = getattr(self, "tid2eid", None)
        if table is not None and not table.is_meta:
            rows, k = table.shape
            slots = torch.arange(rows * k, device=table.device).view(rows, k)
            table.copy_(slots % self.num_experts)

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, scores)`` in float32 for ``x`` of shape ``[T, H]``."""
        bias = None if self.bias is None else self.bias.float()
        logits = F.linear(x.float(), self.weight.float(), bias)
        if self.config.score_func == "softmax":
            return logits, torch.softmax(logits, dim=-1)
        if self.config.score_func == "sqrtsoftplus":
            return logits, F.softplus(logits).sqrt()
        return logits, torch.sigmoid(logits)

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """Top-k expert ids ``[T, k]`` from ``scores`` (+ selection bias, group-limited)."""
        choice = scores.detach()
        if self.e_score_correction_bias is not None:
            choice = choice + self.e_score_correction_bias.float()
        cfg = self.config
        if cfg.n_groups > 1:
            per_group = self.num_experts // cfg.n_groups
            grouped = choice.view(-1, cfg.n_groups, per_group)
            group_scores = grouped.topk(min(2, per_group), dim=-1).values.sum(dim=-1)
            keep = torch.topk(group_scores, k=cfg.topk_groups, dim=-1, sorted=False).indices
            group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
            expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(choice.shape)
            choice = choice.masked_fill(~expert_mask, float("-inf"))
        return torch.topk(choice, k=self.top_k, dim=-1, sorted=False).indices

    def forward(
        self, x: torch.Tensor, input_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Route ``x`` ``[..., H]``: ``(logits [T, E], topk_weights [T, k] fp32, topk_ids [T, k])``.

        ``input_ids`` (the token ids of ``x``'s tokens) are read by hash routing only.
        """
        x = x.reshape(-1, self.config.hidden_size)
        if self.config.routing == "balanced":
            return self.balanced(x)
        logits, scores = self.scores(x)
        if self.config.routing == "hash":
            topk_ids = self.hashed(input_ids, x.shape[0])
        else:
            topk_ids = self.select(scores)
        weights = scores.gather(1, topk_ids)
        if self.config.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        if self.config.route_scale != 1.0:
            weights = weights * self.config.route_scale
        self._record(scores, topk_ids)
        return logits, weights, topk_ids

    def hashed(self, input_ids: torch.Tensor | None, num_tokens: int) -> torch.Tensor:
        """``routing="hash"``: each token's experts ``[T, k]``, the ``tid2eid`` row of its id."""
        if input_ids is None:
            raise ValueError(
                "hash routing picks each token's experts by its token id, and this MoE block got "
                "none: call the model with input_ids (not inputs_embeds alone), and let the "
                "decoder layer pass them to its mlp (transformers' DeepSeek-V4 layers do)"
            )
        if input_ids.numel() != num_tokens:
            raise ValueError(
                f"hash routing got {input_ids.numel()} token ids for {num_tokens} tokens: pass "
                "the input_ids of the hidden states being routed"
            )
        return self.tid2eid[input_ids.reshape(-1).long()].long()

    def balanced(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``routing="balanced"``: every expert the same load, no gate, no balancing loss."""
        tokens, k = x.shape[0], self.top_k
        topk_ids = torch.arange(tokens * k, device=x.device).view(tokens, k) % self.num_experts
        weights = torch.full((tokens, k), 1.0 / k, device=x.device)
        logits = torch.zeros(tokens, self.num_experts, device=x.device)
        counted = topk_ids if self.token_mask is None else topk_ids[self.token_mask.reshape(-1)]
        with torch.no_grad():
            counts = torch.bincount(counted.reshape(-1), minlength=self.num_experts)
            self.load_counts += counts.to(self.load_counts.dtype)
        self.aux_loss = None
        return logits, weights, topk_ids

    def _record(self, scores: torch.Tensor, topk_ids: torch.Tensor) -> None:
        mask = self.token_mask
        if mask is not None:
            if mask.numel() != scores.shape[0]:
                raise ValueError(
                    f"the routing mask has {mask.numel()} tokens, this forward {scores.shape[0]}: "
                    "set it from the attention mask of the batch being run (routing_mask)"
                )
            scores, topk_ids = scores[mask], topk_ids[mask]
        with torch.no_grad():
            counts = torch.bincount(topk_ids.reshape(-1), minlength=self.num_experts)
            counts = counts.to(self.load_counts.dtype)
            self.load_counts += counts
            if self.training and self.e_score_correction_bias is not None:
                self.bias_counts += counts
        self.aux_loss = None
        if self.training and self.config.balancing == "aux_loss" and self.config.routing != "hash":
            self.aux_loss = self.config.aux_loss_coeff * switch_aux_loss(
                scores, counts, normalize=self.config.score_func != "softmax"
            )
            self.aux_loss_sum = self.aux_loss_sum + self.aux_loss.detach()
            self.aux_loss_calls += 1

    @torch.no_grad()
    def update_bias(self, counts: torch.Tensor | None = None) -> None:
        """Nudge ``e_score_correction_bias`` toward equal load, then reset the token counts.

        ``bias += bias_update_rate * sign(mean(load) - load)`` where ``load`` is ``counts``
        (default: the tokens routed to each expert since the last update).
        """
        if self.e_score_correction_bias is None:
            return
        load = self.bias_counts if counts is None else counts.to(self.bias_counts)
        if load.sum() > 0:
            step = self.config.bias_update_rate * torch.sign(load.mean() - load)
            self.e_score_correction_bias.add_(step.to(self.e_score_correction_bias.dtype))
        self.bias_counts.zero_()


class StaticsBiasRouter(TopKRouter):
    """A ``TopKRouter`` whose selection bias is ``moe_statics.e_score_correction_bias``
    ``[1, E]``, the layout of ERNIE-4.5 MoE's router (read and moved as its row 0)."""

    def _register_selection_bias(self) -> None:
        self.moe_statics = nn.Module()
        self.moe_statics.register_buffer(
            "e_score_correction_bias", torch.zeros(1, self.num_experts)
        )

    @property
    def e_score_correction_bias(self) -> torch.Tensor:
        """Row 0 of ``moe_statics.e_score_correction_bias`` (a view: updates write through)."""
        return self.moe_statics.e_score_correction_bias[0]


class BlockBiasRouter(TopKRouter):
    """A ``TopKRouter`` whose ``e_score_correction_bias`` is a buffer of its MoE block.

    For HF blocks that keep the bias beside the gate (MiniMax-M2, Hy3:
    ``mlp.e_score_correction_bias``): the block owns the tensor, this router reads it there.
    """

    def __init__(self, config: MoEConfig, block: nn.Module) -> None:
        super().__init__(config)
        self._block = [block]  # a list, so that the block is not registered as a child

    def _register_selection_bias(self) -> None:
        pass  # the block registers it

    @property
    def e_score_correction_bias(self) -> torch.Tensor:
        """The block's ``e_score_correction_bias`` buffer."""
        return self._block[0].e_score_correction_bias


def switch_aux_loss(scores: torch.Tensor, counts: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Switch-Transformer balancing loss ``E * sum_e f_e * P_e`` (``f`` sums to top-k).

    ``scores`` ``[T, E]`` are softmax probabilities, or other positive scores (sigmoid,
    sqrtsoftplus) with ``normalize=True`` (divided by their per-token sum); ``counts`` ``[E]`` the (token, slot) assignments per expert.
    """
    num_tokens, num_experts = scores.shape
    if num_tokens == 0:  # every token masked: nothing to balance
        return scores.sum() * 0.0
    probs = scores / scores.sum(dim=-1, keepdim=True) if normalize else scores
    fraction = counts.float() / max(num_tokens, 1)
    return num_experts * (fraction * probs.mean(dim=0)).sum()
