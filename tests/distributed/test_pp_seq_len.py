"""Pipeline steps of changing length (`PipelineSeqLen`), in one process.

A one-process group runs torch's schedule over every stage of a tiny Llama (one stage, or two
stages on the one rank): each step's loss and gradients equal the whole model's, every
stage's receive descriptors take the step's length, and after the first step (torch's shape
probe) the model runs only the step's own micro-batches. The same over real P2P is the
variable-length layout of tests/recipes/test_llm_pipeline.py. Rows of several documents
(packed rows) keep each document's attention to itself in the stages, as in the whole model.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from automodel.distributed import (
    PipelineSeqLen,
    build_pipeline_schedule,
    split_decoder_into_stages,
)

N_MICRO = 2


def summed_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), reduction="sum"
    )


@pytest.mark.parametrize(("schedule", "num_stages"), [("gpipe", 1), ("interleaved_1f1b", 2)])
def test_steps_of_changing_length_match_the_whole_model(
    single_rank_group, tiny_llama_config, schedule: str, num_stages: int
) -> None:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config = tiny_llama_config(num_hidden_layers=4, attn_implementation="sdpa")
    whole = LlamaForCausalLM(config)
    stages = split_decoder_into_stages(copy.deepcopy(whole), None, num_stages)
    pipe = build_pipeline_schedule(
        stages, N_MICRO, summed_ce, schedule, device="cpu", scale_grads=False
    )
    lengths = PipelineSeqLen(pipe)
    forwards: dict[int, int] = {}
    for stage in stages:
        stage.register_forward_hook(
            lambda m, *_: forwards.__setitem__(m.stage_index, forwards.get(m.stage_index, 0) + 1)
        )
    steps = [(12, True), (8, True), (8, True), (16, False), (16, True), (5, True)]
    if num_stages > 1:  # torch's eval cannot hand activations between two stages of one rank
        steps = [(length, True) for length, _ in steps]
    previous = None
    for step, (length, train) in enumerate(steps):
        assert lengths.set(length) == (length != previous)
        previous = length
        ids = torch.randint(0, config.vocab_size, (N_MICRO, 2, length))
        forwards.clear()
        whole.zero_grad(set_to_none=True)
        for stage in stages:
            stage.zero_grad(set_to_none=True)
        losses: list[torch.Tensor] = []
        inputs = {"arg_mbs": [(mb,) for mb in ids], "target_mbs": list(ids), "losses": losses}
        if train:
            pipe.step(return_outputs=False, **inputs)
        else:
            with torch.no_grad():
                pipe.eval(**inputs)
        expected = sum(summed_ce(whole(mb).logits, mb) for mb in ids)
        if train:
            expected.backward()
        torch.testing.assert_close(sum(losses), expected.detach(), rtol=1e-6, atol=1e-5)
        grads = {name: p.grad for name, p in whole.named_parameters()}
        for stage in stages if train else []:
            for name, p in stage.named_parameters():
                torch.testing.assert_close(p.grad, grads[name], rtol=1e-5, atol=1e-6)
        # the stages set up at this length: what they receive (activations, their gradients)
        for stage in lengths.stages:
            infos = [*stage.args_recv_info[0], *stage.grad_recv_info.get(0, ())]
            assert {info.tensor_meta.shape[1] for info in infos} == {length}, (step, stage)
        # torch's shape probe on the first step only: then each stage runs the micro-batches
        probe = 1 if step == 0 else 0
        assert forwards == {s.stage_index: N_MICRO + probe for s in stages}, step


def test_lengths_below_one_are_refused(single_rank_group, tiny_llama_config) -> None:
    from transformers import LlamaForCausalLM

    stages = split_decoder_into_stages(LlamaForCausalLM(tiny_llama_config()), None, 1)
    lengths = PipelineSeqLen(build_pipeline_schedule(stages, 1, summed_ce, "gpipe", device="cpu"))
    with pytest.raises(ValueError, match="seq_len must be at least 1, got 0"):
        lengths.set(0)


def test_a_model_with_several_residual_streams_is_not_split(single_rank_group) -> None:
    """DeepSeek-V4 keeps hc_mult residual streams between layers: no stage boundary fits it."""
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

    config = DeepseekV4Config(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, q_lora_rank=16, moe_intermediate_size=16,
        n_routed_experts=4, num_experts_per_tok=2, layer_types=["sliding_attention"] * 2,
        mlp_layer_types=["moe", "moe"], sliding_window=4, o_groups=2, o_lora_rank=8, hc_mult=2,
    )  # fmt: skip
    with pytest.raises(NotImplementedError, match="passes 2 residual streams"):
        split_decoder_into_stages(DeepseekV4ForCausalLM(config), None, 1)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_stages_keep_the_documents_of_a_row_apart_as_the_whole_model(
    tiny_llama_config, attention: str
) -> None:
    """Rows of several documents (`position_ids` restarting at 0): two stages give the whole
    model's logits, and a document's logits are those it has alone."""
    from transformers import LlamaForCausalLM

    from automodel.distributed import DecoderStage

    torch.manual_seed(0)
    config = tiny_llama_config(num_hidden_layers=2, attn_implementation=attention)
    whole = LlamaForCausalLM(config).eval()
    stages = [DecoderStage(whole.model, whole.lm_head, [i], i, 2, None) for i in (0, 1)]
    ids = torch.randint(0, config.vocab_size, (2, 12))
    positions = torch.stack([torch.cat([torch.arange(5), torch.arange(7)]), torch.arange(12)])
    with torch.no_grad():
        expected = whole(input_ids=ids, position_ids=positions, use_cache=False).logits
        piped = stages[1](stages[0](ids, position_ids=positions), position_ids=positions)
        alone = whole(input_ids=ids[:1, 5:], use_cache=False).logits
        plain = stages[1](stages[0](ids))  # no positions: one document per row
    torch.testing.assert_close(piped, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(piped[0, 5:], alone[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain[0, 5:], alone[0], atol=1e-3)  # the mask is what did it


def test_a_last_stage_with_a_head_loss_returns_the_loss_of_its_logits(tiny_llama_config) -> None:
    """`head_loss` (the fused linear cross-entropy): the last stage given labels returns the
    loss the logits give, and its gradients; without labels, the logits."""
    from transformers import LlamaForCausalLM

    from automodel.core.losses import FusedLinearCrossEntropy, MaskedCrossEntropy
    from automodel.distributed import DecoderStage

    torch.manual_seed(0)
    config = tiny_llama_config(num_hidden_layers=2)
    whole = LlamaForCausalLM(config)
    stages = [DecoderStage(whole.model, whole.lm_head, [i], i, 2, None) for i in (0, 1)]
    ids = torch.randint(0, config.vocab_size, (2, 12))
    labels = ids.roll(-1, dims=1)
    labels[:, -3:] = -100
    logits = stages[1](stages[0](ids))
    expected = MaskedCrossEntropy()(logits, labels, 18)
    (reference,) = torch.autograd.grad(expected, whole.lm_head.weight)
    stages[1].head_loss = FusedLinearCrossEntropy().__call__
    loss = stages[1](stages[0](ids), labels=labels, num_label_tokens=18)
    assert loss.dim() == 0
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, whole.lm_head.weight)
    torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-6)
    assert stages[1](stages[0](ids)).shape == logits.shape  # no labels: the logits


def test_documents_in_stages_are_refused_with_flash_attention(tiny_llama_config) -> None:
    from types import SimpleNamespace

    from transformers import LlamaForCausalLM

    from automodel.distributed import DecoderStage

    model = LlamaForCausalLM(tiny_llama_config(num_hidden_layers=1))
    stage = DecoderStage(model.model, model.lm_head, [0], 0, 1, None)
    stage.config = SimpleNamespace(_attn_implementation="flash_attention_2")
    hidden = torch.zeros(1, 4, model.config.hidden_size)
    assert stage._mask(hidden, None, None) is None  # plain rows: the kernel is causal
    with pytest.raises(NotImplementedError, match="need sdpa or eager attention"):
        stage._mask(hidden, None, torch.arange(4)[None])
