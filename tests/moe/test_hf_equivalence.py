"""Our MoE block equals transformers' own blocks, forward and backward, and round-trips to HF."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from automodel.moe import MoE, moe_aux_loss, patch_hf_moe, unpatch_hf_moe, update_moe_bias

from .conftest import FAMILIES, causal_lm, moe_blocks, randomize_

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _hf_block(family: str, index: int = -1) -> nn.Module:
    """The family's HF MoE block ``index`` inside a holder module (as ``holder.mlp``)."""
    model = causal_lm(family)
    holder = nn.Module()
    holder.mlp = model.get_submodule(moe_blocks(family)[index])
    return randomize_(holder, seed=1)


# (family, which of its MoE blocks): the last of each, and DeepSeek-V4's hash-routed first one
BLOCKS = [*((family, -1) for family in FAMILIES), ("deepseek_v4", 0)]


def _trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {k: p for k, p in module.named_parameters() if p.requires_grad}


def _sorted(scores: torch.Tensor) -> torch.Tensor:
    """Each token's top-k scores in ascending order (transformers' top-k is sorted, ours not)."""
    return scores.float().sort(dim=-1).values


@pytest.mark.parametrize(("family", "index"), BLOCKS, ids=[f"{f}{i}" for f, i in BLOCKS])
def test_block_forward_backward_match_hf(family: str, index: int) -> None:
    ref = _hf_block(family, index).train()
    ours = copy.deepcopy(ref)
    assert patch_hf_moe(ours) == ["mlp"]
    assert isinstance(ours.mlp, MoE)
    # Same parameter names and shapes: the weight mapping is the identity.
    ref_params, our_params = _trainable(ref), _trainable(ours)
    assert {k: v.shape for k, v in ref_params.items()} == {
        k: v.shape for k, v in our_params.items()
    }
    assert {k: v.shape for k, v in ref.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }

    x = torch.randn(3, 11, 32, generator=torch.Generator().manual_seed(2))
    x_ref, x_our = x.clone().requires_grad_(), x.clone().requires_grad_()
    kwargs = {}
    if getattr(ref.mlp, "is_hash", False):  # DeepSeek-V4's layer passes the token ids
        assert ours.mlp.gate.config.routing == "hash"
        kwargs["input_ids"] = torch.randint(
            0, 64, (3, 11), generator=torch.Generator().manual_seed(3)
        )
    y_ref, y_our = ref.mlp(x_ref, **kwargs), ours.mlp(x_our, **kwargs)
    assert type(y_our) is type(y_ref)
    if isinstance(y_ref, tuple):  # gpt-oss: (output, router scores [T, k]) for its decoder layer
        (y_ref, scores_ref), (y_our, scores_our) = y_ref, y_our
        torch.testing.assert_close(_sorted(scores_our), _sorted(scores_ref), **TOL)
    torch.testing.assert_close(y_our, y_ref, **TOL)
    grad_out = torch.randn_like(y_ref)
    y_ref.backward(grad_out)
    y_our.backward(grad_out)
    torch.testing.assert_close(x_our.grad, x_ref.grad, **TOL)
    for name, p in ref_params.items():
        assert p.grad is not None, name
        torch.testing.assert_close(our_params[name].grad, p.grad, **TOL, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_patched_model_logits_and_unpatch(family: str, hf_model) -> None:
    ref = hf_model(family)
    ours = copy.deepcopy(ref)
    names = patch_hf_moe(ours)
    assert names == moe_blocks(family)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours(ids).logits, ref(ids).logits, **TOL)
    assert unpatch_hf_moe(ours) == names
    assert type(ours.get_submodule(names[-1])) is type(ref.get_submodule(names[-1]))
    torch.testing.assert_close(ours(ids).logits, ref(ids).logits, **TOL)


@pytest.mark.parametrize(
    ("family", "balancing"),
    [
        ("qwen3_moe", "aux_loss"),
        ("qwen2_moe", "none"),
        ("mixtral", "aux_loss"),
        ("deepseek_v3", "bias"),
        ("minimax_m2", "bias"),  # the bias is the block's, not the gate's
        ("nemotron_h", "none"),  # relu2 experts between latent projections
        ("gpt_oss", "aux_loss"),  # router and expert biases, [E, in, out] expert weights
        ("deepseek_v4", "bias"),  # a hash-routed layer (no bias) and a biased one
        ("ernie4_5_moe", "bias"),  # the bias in gate.moe_statics, [1, E]
        ("mistral4", "aux_loss"),  # its HF router has no bias to keep one in
        ("minimax_m3", "bias"),  # a shared MLP with a fused gate_up_proj
    ],
)
def test_train_step_then_save_pretrained_loads_in_plain_transformers(
    family: str, balancing: str, hf_model, tmp_path
) -> None:
    model = hf_model(family)
    patch_hf_moe(model, balancing=balancing, bias_update_rate=0.05)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(4))
    for _ in range(2):
        loss = model(ids, labels=ids).loss
        aux = moe_aux_loss(model)
        assert (aux is not None) == (balancing == "aux_loss")
        (loss if aux is None else loss + aux).backward()
        opt.step()
        opt.zero_grad()
        update_moe_bias(model)
    if balancing == "bias":
        block = model.get_submodule(moe_blocks(family)[-1])
        assert block.gate.e_score_correction_bias.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path)
    plain = type(model).from_pretrained(tmp_path).eval()  # the HF class: blocks are swapped
    assert not any(isinstance(m, MoE) for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, expected, **TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_keys_unchanged_by_patch(family: str, hf_model) -> None:
    ref = hf_model(family)
    ours = copy.deepcopy(ref)
    patch_hf_moe(ours)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert set(our_sd) == set(ref_sd)
    for key, value in ref_sd.items():
        assert torch.equal(our_sd[key], value), key


def test_gpt_oss_aux_loss_is_transformers_load_balancing_loss() -> None:
    """gpt-oss's router softmaxes over its top k only; the aux loss still uses the softmax over
    every expert, as transformers' gpt-oss load_balancing_loss_func (and NeMo AutoModel) do."""
    from transformers.models.gpt_oss.modeling_gpt_oss import load_balancing_loss_func

    ref = _hf_block("gpt_oss")
    ours = copy.deepcopy(ref)
    patch_hf_moe(ours, balancing="aux_loss", aux_loss_coeff=0.5)
    ours.train()
    x = torch.randn(4, 9, 32, generator=torch.Generator().manual_seed(6))
    ours.mlp(x)
    logits, _, _ = ref.mlp.router(x.reshape(-1, 32))
    expected = load_balancing_loss_func((logits,), num_experts=8, top_k=3)
    torch.testing.assert_close(moe_aux_loss(ours), 0.5 * expected, **TOL)


def test_ernie_aux_loss_is_transformers_load_balancing_loss() -> None:
    """ERNIE-4.5's softmax router: with its selection bias at zero, our aux loss is
    transformers' load_balancing_loss_func of the router logits (the bias moves only the
    choice: ours counts the experts chosen, theirs the unbiased top-k)."""
    from transformers.models.ernie4_5_moe.modeling_ernie4_5_moe import load_balancing_loss_func

    ref = _hf_block("ernie4_5_moe")
    with torch.no_grad():
        ref.mlp.gate.moe_statics.e_score_correction_bias.zero_()
    ours = copy.deepcopy(ref)
    patch_hf_moe(ours, balancing="aux_loss", aux_loss_coeff=0.5)
    ours.train()
    x = torch.randn(4, 9, 32, generator=torch.Generator().manual_seed(6))
    ours.mlp(x)
    logits, _, _ = ref.mlp.gate(x.reshape(-1, 32))
    expected = load_balancing_loss_func((logits,), num_experts=8, top_k=3)
    torch.testing.assert_close(moe_aux_loss(ours), 0.5 * expected, **TOL)


def test_deepseek_v4_hash_layer_routes_by_token_id_and_is_not_balanced(hf_model) -> None:
    """The hash layer's experts are its table's row of each token id, whatever the scores;
    it keeps no bias and gives no aux loss, while the learned layer is balanced as asked."""
    model = hf_model("deepseek_v4")
    patch_hf_moe(model, balancing="aux_loss", routing="learned")
    hashed, learned = (model.model.layers[i].mlp.gate for i in (0, 1))
    assert hashed.config.routing == "hash" and learned.config.routing == "learned"
    assert hashed.e_score_correction_bias is None and "tid2eid" not in dict(learned.named_buffers())
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(8))
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(9))
    hashed.train()
    _, weights, chosen = hashed(x, ids)
    assert torch.equal(chosen, hashed.tid2eid[ids.reshape(-1)])
    assert hashed.aux_loss is None
    _, scores = hashed.scores(x.reshape(-1, 32))
    expected = scores.gather(1, chosen)
    torch.testing.assert_close(weights, 2.5 * expected / expected.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match="hash routing picks each token's experts by its token"):
        hashed(x)
    model.train()
    model(ids, labels=ids)
    assert hashed.aux_loss is None and learned.aux_loss is not None
    with pytest.raises(ValueError, match="routing='hash' is read from the HF model"):
        patch_hf_moe(hf_model("deepseek_v4"), routing="hash")


def test_deepseek_v4_hash_choice_dispatches_like_any_top_k(single_rank_group: None) -> None:
    """Expert parallelism (the all_to_all dispatcher, experts as DTensor shards) on the hash
    layer: the table's choice reaches the experts as any top-k does."""
    from torch.distributed.tensor import DTensor

    from automodel.moe import shard_experts

    whole = _hf_block("deepseek_v4", 0)
    patch_hf_moe(whole)
    sharded = copy.deepcopy(whole)
    assert shard_experts(sharded, None) == ["mlp.experts"]
    assert sharded.mlp.experts.dispatcher is not None
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(10))
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(7))
    outputs = [model.mlp(x, input_ids=ids) for model in (whole, sharded)]
    torch.testing.assert_close(outputs[1], outputs[0], **TOL)
    for out in outputs:
        out.square().sum().backward()
    grads = {n: p.grad for n, p in whole.named_parameters()}
    for name, param in sharded.named_parameters():
        grad = param.grad.to_local() if isinstance(param, DTensor) else param.grad
        torch.testing.assert_close(grad, grads[name], **TOL, msg=name)


def test_patch_errors(hf_model, tiny_llama_config) -> None:
    import transformers

    with pytest.raises(ValueError, match="no supported MoE block in LlamaForCausalLM"):
        patch_hf_moe(transformers.LlamaForCausalLM(tiny_llama_config()))
    with pytest.raises(ValueError, match=r"reads \['n_routed_experts'\] from the HF model"):
        patch_hf_moe(hf_model("qwen3_moe"), n_routed_experts=4)
    with pytest.raises(TypeError, match="unknown MoEConfig field"):
        patch_hf_moe(hf_model("qwen3_moe"), balance="bias")


def test_mxfp4_quantized_gpt_oss_says_to_load_it_dequantized(hf_model) -> None:
    """transformers keeps gpt-oss's MXFP4 experts packed where its kernels are installed."""
    from transformers.integrations.mxfp4 import Mxfp4GptOssExperts, Mxfp4GptOssMLP

    model = hf_model("gpt_oss")
    layer = model.model.layers[0]
    layer.mlp = Mxfp4GptOssMLP(layer.mlp.router, Mxfp4GptOssExperts(model.config))
    with pytest.raises(ValueError, match=r"layers\.0\.mlp: gpt-oss with MXFP4.*dequantize: true"):
        patch_hf_moe(model)


def test_patch_warns_that_router_logits_are_not_recorded(hf_model) -> None:
    model = hf_model("mixtral")
    model.config.output_router_logits = True
    with pytest.warns(UserWarning, match="output_router_logits=True"):
        patch_hf_moe(model)


def test_unpatch_warns_when_a_learned_bias_has_no_hf_home(hf_model) -> None:
    model = hf_model("qwen3_moe")
    patch_hf_moe(model, balancing="bias")
    with torch.no_grad():
        model.model.layers[0].mlp.gate.e_score_correction_bias.fill_(0.1)
    with pytest.warns(UserWarning, match="e_score_correction_bias"):
        unpatch_hf_moe(model)


def test_activation_checkpointing_trains(hf_model) -> None:
    from automodel.moe import _experts

    _experts._grouped_mm_works.cache_clear()  # the first probe may run inside a checkpoint
    ref = hf_model("qwen3_moe")
    ours = copy.deepcopy(ref)
    patch_hf_moe(ours)
    ours.activation_checkpointing_enable()
    ref.train()
    ours.train()
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(5))
    ours(ids, labels=ids).loss.backward()
    ref(ids, labels=ids).loss.backward()
    our_params = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(our_params[name].grad, p.grad, **TOL, msg=name)


def test_block_owned_bias_follows_its_block() -> None:
    """MiniMax-M2 keeps the selection bias on the block: the router reads the block's buffer,
    also after a copy, a dtype change and an assigning load."""
    holder = _hf_block("minimax_m2")
    patch_hf_moe(holder)
    block = holder.mlp
    assert "e_score_correction_bias" in dict(block.named_buffers(recurse=False))
    assert "e_score_correction_bias" not in dict(block.gate.named_buffers())
    twin = copy.deepcopy(block).double()
    assert twin.gate.e_score_correction_bias is twin.e_score_correction_bias
    assert twin.e_score_correction_bias.dtype == torch.float64
    assert block.gate.e_score_correction_bias is block.e_score_correction_bias
    new_bias = torch.full_like(block.e_score_correction_bias, 0.5)
    block.load_state_dict({**block.state_dict(), "e_score_correction_bias": new_bias}, assign=True)
    assert block.gate.e_score_correction_bias is new_bias


def test_qwen3_vl_moe_language_model_blocks_swap_as_the_same_model() -> None:
    """Qwen3-VL-MoE's language model (its router always renormalises the top-k): swapped, the
    text model gives transformers' hidden states and gradients, under the same weight names."""
    from transformers import Qwen3VLMoeTextConfig
    from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextModel

    config = Qwen3VLMoeTextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        num_experts=8, num_experts_per_tok=3,
    )  # fmt: skip
    config._experts_implementation = "eager"
    torch.manual_seed(0)
    ref = randomize_(Qwen3VLMoeTextModel(config)).train()
    ours = copy.deepcopy(ref)
    assert patch_hf_moe(ours) == ["layers.0.mlp", "layers.1.mlp"]
    assert ref.state_dict().keys() == ours.state_dict().keys()
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(4))
    out_ref, out_ours = ref(input_ids=ids).last_hidden_state, ours(input_ids=ids).last_hidden_state
    torch.testing.assert_close(out_ours, out_ref, **TOL)
    grad_out = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(5)) / 16
    out_ref.backward(grad_out)
    out_ours.backward(grad_out)
    grads = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(
            grads[name].grad, p.grad, **TOL, msg=lambda m, n=name: f"{n}: {m}"
        )
