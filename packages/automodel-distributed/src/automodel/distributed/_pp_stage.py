"""One pipeline stage of a Hugging Face decoder (`DecoderStage`), and a rank's several stages
seen as one module (`RankStages`).

A stage does what the Hugging Face model's forward does around its layers: position ids
``0..seq-1``, rotary embeddings from the model's own ``rotary_emb`` and a causal mask (none for
SDPA / flash attention, which are causal by themselves; an additive one for eager attention,
and for SDPA when a layer's sliding window is shorter than the sequence). Rows of several
documents (packed rows, padding-free batches) pass their ``position_ids`` (restarting at 0 for
every document) to every stage as a keyword: the rotary embeddings follow them and attention
stays within each document (an additive block-causal mask; SDPA or eager attention). With
context-parallel attention (``HF_ATTENTION_NAME``) a stage gets this rank's part of each row
with its ``position_ids`` and builds no mask: that attention masks over every rank's
positions. KV caches are not supported in stages, nor padding masks in attention: padding goes at the end of each
row, where under the causal mask no real token sees it. A stage's forward takes the
micro-batch's ``token_mask`` (1 for real tokens) as a keyword all the same, for forward hooks
that must tell padding apart (MoE routers counting expert load). Pass such keywords to every
stage in the schedule's ``kwarg_mbs``. The layers keep their Hugging Face module paths
(``model.layers.5...``), so checkpoints of a stage use the model's own parameter names, and
``apply_tensor_parallel(stage, mesh["tp"])`` uses the model's own tensor-parallel plan.

A tied LM head (the input embedding's weight) is copied to the last stage under the
embedding's name; ``sum_tied_embedding_grads`` (`_pp`) keeps the copies equal. With a
``head_loss`` (a fused linear cross-entropy: hidden states and the LM head in, the loss out,
never the whole logits), the last stage given ``labels`` returns that loss instead of logits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ._cp_allgather import HF_ATTENTION_NAME
from ._documents import document_ids
from ._hf_config import layer_config

#: attention implementations that are causal without a mask when given none
MASKLESS_CAUSAL = ("sdpa", "flash_attention_2", "flash_attention_3")


class DecoderStage(nn.Module):
    """One pipeline stage of a decoder: [embedding] + layers[a:b] + [norm + LM head].

    Children follow Hugging Face paths: ``model.embed_tokens`` (first stage), ``model.layers``
    (a ``ModuleDict`` keyed by the original layer index), ``model.norm`` and ``lm_head`` (last
    stage), ``model.rotary_emb`` (no parameters, on every stage).
    """

    def __init__(
        self,
        base: nn.Module,
        lm_head: nn.Module | None,
        layer_ids: Sequence[int],
        stage_index: int,
        num_stages: int,
        pp_group: dist.ProcessGroup | None,
        tp_plan: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.stage_index = stage_index
        self.num_stages = num_stages
        self.pp_group = pp_group
        self.config = getattr(base, "config", None)
        self.is_first = stage_index == 0
        self.is_last = stage_index == num_stages - 1
        self.model = nn.Module()
        self.model.embed_tokens = base.embed_tokens if self.is_first else None
        self.model.layers = nn.ModuleDict({str(i): base.layers[i] for i in layer_ids})
        self.model.norm = base.norm if self.is_last else None
        self.model.rotary_emb = base.rotary_emb
        self.lm_head = lm_head if self.is_last else None
        tied = lm_head is not None and lm_head.weight is base.embed_tokens.weight
        # on every stage of a split model whose LM head is its input embedding (so that every
        # rank knows to create tied_embedding_group, a collective)
        self.has_tied_head = tied and num_stages > 1
        # the first or last of those stages: each holds the shared weight
        self.ties_embedding = self.has_tied_head and self.is_first != self.is_last
        if self.ties_embedding and self.is_last:
            # The first stage owns the embedding; this one computes logits with a copy under the
            # same name, and the two sum their gradients (sum_tied_embedding_grads), so the
            # copies take the same optimizer steps and stay equal.
            self.model.embed_tokens = copy.deepcopy(base.embed_tokens)
            self.lm_head = copy.deepcopy(lm_head)
            self.lm_head.weight = self.model.embed_tokens.weight
        # (hidden, head weight, labels, num_label_tokens, head bias) -> loss, on the last stage
        self.head_loss: Callable[..., torch.Tensor] | None = None
        self._tp_plan = tp_plan  # the model's own TP plan: same module paths as the stage
        # the decoder-layer class names, so FSDP2 (decoder_blocks) shards the stage per layer
        self._no_split_modules = getattr(base, "_no_split_modules", None)

    def _mask(
        self, hidden: torch.Tensor, window: int | None, position_ids: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The attention mask the Hugging Face model would build for a layer (no padding);
        with `position_ids` of rows of several documents, causal within each document."""
        impl = getattr(self.config, "_attn_implementation", None) or "eager"
        if impl == HF_ATTENTION_NAME:  # context parallel: it masks over every rank's positions
            return None
        if impl not in (*MASKLESS_CAUSAL, "eager"):
            raise NotImplementedError(
                f"pipeline stages support attention implementations {(*MASKLESS_CAUSAL, 'eager')}, "
                f"not {impl!r}"
            )
        if position_ids is not None and impl.startswith("flash"):
            raise NotImplementedError(
                "rows of several documents (packed rows, padding-free batches) in pipeline "
                f"stages need sdpa or eager attention, not {impl!r}"
            )
        batch, seq = hidden.shape[:2]
        windowed = window is not None and seq > window
        if position_ids is None and (impl.startswith("flash") or (impl == "sdpa" and not windowed)):
            return None  # the kernel is causal (and windowed, for flash) by itself
        pos = torch.arange(seq, device=hidden.device)
        blocked = (pos[None, :] > pos[:, None])[None]
        if windowed:
            blocked = blocked | (pos[:, None] - pos[None, :] >= window)
        if position_ids is not None:  # each token sees its own document only
            documents = document_ids(position_ids)
            blocked = blocked | (documents[:, :, None] != documents[:, None, :])
        mask = torch.zeros(blocked.shape, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(blocked, torch.finfo(hidden.dtype).min)
        return mask[:, None].expand(batch, 1, seq, seq)

    def _window(self, index: int, layer: nn.Module) -> int | None:
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "sliding_window"):  # Qwen2 / Qwen3: per layer
            return attn.sliding_window
        # Mistral: every layer; a heterogeneous config: this layer's own
        return getattr(layer_config(self.config, index), "sliding_window", None)

    def forward(
        self,
        x: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_label_tokens: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Token ids (first stage) or hidden states in; hidden states or logits (last) out,
        or with ``head_loss`` and ``labels`` (next-token targets) the last stage's loss.

        ``token_mask`` is for forward hooks; the stage does not use it (see the module notes).
        ``position_ids``: those of rows of several documents (None: ``0..seq-1``).
        """
        hidden = self.model.embed_tokens(x) if self.is_first else x
        documents = position_ids
        if position_ids is None:
            position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        position_embeddings = self.model.rotary_emb(hidden, position_ids)
        masks: dict[int | None, torch.Tensor | None] = {}
        for index, layer in self.model.layers.items():
            window = self._window(int(index), layer)
            if window not in masks:
                masks[window] = self._mask(hidden, window, documents)
            hidden = layer(
                hidden,
                attention_mask=masks[window],
                position_ids=position_ids,
                position_embeddings=position_embeddings,
            )
            if isinstance(hidden, tuple):  # transformers 4 decoder layers return tuples
                hidden = hidden[0]
        if not self.is_last:
            return hidden
        hidden = self.model.norm(hidden)
        if self.head_loss is not None and labels is not None:
            head = self.lm_head
            return self.head_loss(hidden, head.weight, labels, num_label_tokens, head.bias)
        return self.lm_head(hidden)


class RankStages(nn.Module):
    """A rank's stages as one module with the model's parameter names, for optimizers and
    checkpoints; the schedule runs the stages themselves (``stages``), which own the modules.
    """

    def __init__(self, stages: Sequence[DecoderStage]) -> None:
        super().__init__()
        self.stages = list(stages)  # a plain list: the modules register once, below
        first = next((s for s in stages if s.is_first), None)
        last = next((s for s in stages if s.is_last), None)
        self.config = stages[0].config
        self.is_first, self.is_last = first is not None, last is not None
        self.model = nn.Module()
        embedding = (
            first
            if first is not None
            else last
            if last is not None and last.ties_embedding
            else None
        )
        self.model.embed_tokens = embedding.model.embed_tokens if embedding is not None else None
        self.model.layers = nn.ModuleDict(
            {index: layer for stage in stages for index, layer in stage.model.layers.items()}
        )
        self.model.norm = last.model.norm if last is not None else None
        self.model.rotary_emb = stages[0].model.rotary_emb
        self.lm_head = last.lm_head if last is not None else None
        self._no_split_modules = stages[0]._no_split_modules

    def forward(self, *args, **kwargs):
        raise RuntimeError("RankStages holds a rank's pipeline stages; run them with the schedule")
