"""QLoRA: NF4 base weights (torchao) under float32 LoRA adapters on a bfloat16 tiny Llama."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from automodel.peft import (
    LoraConfig,
    LoraConfigError,
    LoraLinear,
    apply_lora,
    load_adapter,
    lora_modules,
    lora_state_dict,
    lora_summary,
    merge_lora,
    save_adapter,
    unload_lora,
    unmerge_lora,
)
from automodel.peft._quant import quantized_nbytes

NF4Tensor = pytest.importorskip("torchao.quantization").NF4Tensor
QLORA = dict(dim=4, alpha=8, match_all_linear=True, quantize_base="nf4")


def _logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _inner(nf4):
    """The tensors an NF4 weight is made of (codes, scales, ...), by name."""
    names, _ = nf4.__tensor_flatten__()
    return {name: getattr(nf4, name) for name in names}


def _dequant(weight):
    return weight.get_original_weight()


@pytest.fixture
def bf16_llama(make_llama):
    return make_llama(dtype=torch.bfloat16)


@pytest.fixture
def qlora(make_llama, randomize_adapters):
    """A QLoRA tiny Llama whose adapters already have random (non-zero) B."""
    torch.manual_seed(0)
    model = apply_lora(make_llama(dtype=torch.bfloat16), LoraConfig(**QLORA))
    randomize_adapters(model, seed=6, std=0.3)
    return model


def test_base_weights_are_nf4_and_small(make_llama, bf16_llama):
    model = apply_lora(make_llama(dtype=torch.bfloat16), LoraConfig(**QLORA))
    modules = dict(lora_modules(model))
    assert len(modules) == 14
    quant_bytes = dense_bytes = 0
    for path, module in modules.items():
        assert isinstance(module.weight, NF4Tensor), path
        assert not module.weight.requires_grad
        assert module.weight.shape == bf16_llama.get_submodule(path).weight.shape
        assert module.lora_A.weight.dtype == torch.float32  # adapters stay float32 on 16-bit bases
        nbytes = sum(t.numel() * t.element_size() for t in _inner(module.weight).values())
        assert quantized_nbytes(module.weight) == nbytes
        quant_bytes += nbytes
        dense_bytes += module.weight.numel() * torch.bfloat16.itemsize
    assert quant_bytes < 0.35 * dense_bytes, (quant_bytes, dense_bytes)
    assert type(model.lm_head) is nn.Linear and not isinstance(model.lm_head.weight, NF4Tensor)
    summary = lora_summary(model)
    assert summary.quantized_modules == 14 and "14 base weights in NF4" in str(summary)
    assert (
        summary.total_params
        == sum(p.numel() for p in bf16_llama.parameters()) + summary.trainable_params
    )


def test_logits_close_to_bf16_model(make_llama, bf16_llama, input_ids):
    """NF4 is lossy: each weight within 12% (relative Frobenius error) of the bf16 one, and the
    logits within 15% of the bf16 model's; zeroing those weights instead moves them by ~50%."""
    model = apply_lora(make_llama(dtype=torch.bfloat16), LoraConfig(**QLORA))
    for path, module in lora_modules(model):
        assert _rel(_dequant(module.weight), bf16_llama.get_submodule(path).weight) < 0.12, path
    reference = _logits(bf16_llama, input_ids)
    assert _rel(_logits(model, input_ids), reference) < 0.15
    zeroed = make_llama(dtype=torch.bfloat16)
    with torch.no_grad():
        for path, _ in lora_modules(model):
            zeroed.get_submodule(path).weight.zero_()
    assert _rel(_logits(zeroed, input_ids), reference) > 0.3


def test_training_updates_only_the_adapter(qlora, input_ids):
    # (NF4 tensors are compared through their inner tensors: torchao's clone re-quantizes them)
    before = {
        name: t.detach().clone()
        for name, t in qlora.state_dict().items()
        if "lora_" not in name and not isinstance(t, NF4Tensor)
    }
    nf4_before = {
        p: {k: v.clone() for k, v in _inner(m.weight).items()} for p, m in lora_modules(qlora)
    }
    adapters_before = {k: v.detach().clone() for k, v in lora_state_dict(qlora).items()}
    trainable = [p for p in qlora.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_state_dict(qlora).values()}
    opt = torch.optim.SGD(trainable, lr=0.5)
    qlora.train()
    losses = []
    for _ in range(6):
        loss = qlora(input_ids=input_ids, labels=input_ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    for path, module in lora_modules(qlora):
        assert isinstance(module.weight, NF4Tensor)
        for name, tensor in _inner(module.weight).items():
            assert torch.equal(tensor, nf4_before[path][name]), f"{path}: NF4 {name} changed"
    after = qlora.state_dict()
    assert len(before) == 7  # embeddings, 5 RMSNorms, lm_head
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    for name, tensor in lora_state_dict(qlora).items():
        assert not torch.equal(tensor, adapters_before[name]), f"{name} was not trained"


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_merge_dequantizes_and_unmerge_restores_nf4(
    make_llama, randomize_adapters, input_ids, use_dora
):
    torch.manual_seed(0)
    model = apply_lora(make_llama(dtype=torch.bfloat16), LoraConfig(**QLORA, use_dora=use_dora))
    randomize_adapters(model, seed=6, std=0.3)
    lora_logits = _logits(model, input_ids)
    originals = {p: m.weight for p, m in lora_modules(model)}
    expected = {}
    for path, module in lora_modules(model):
        # merge is defined in float32 and rounded once to the base dtype (bfloat16)
        a, b = module.lora_A.weight, module.lora_B.weight
        dense = _dequant(module.weight).float() + (b @ a) * module.scaling
        if use_dora:
            dense = (module.lora_magnitude_vector / dense.norm(dim=1)).view(-1, 1) * dense
        expected[path] = dense.to(torch.bfloat16)

    merge_lora(model)
    for path, module in lora_modules(model):
        assert not isinstance(module.weight, NF4Tensor)
        assert module.weight.dtype == torch.bfloat16
        assert torch.equal(module.weight, expected[path]), path
        assert _rel(module.weight, _dequant(originals[path])) > 0.1  # the update is not negligible
    # Merged weights are rounded to bfloat16 while the unmerged update is float32: logits agree
    # within 5% (relative Frobenius error); dropping the update would move them by over 20%.
    assert _rel(_logits(model, input_ids), lora_logits) < 0.05

    unmerge_lora(model)
    for path, module in lora_modules(model):
        assert module.weight is originals[path]
        assert isinstance(module.weight, NF4Tensor)
    assert torch.equal(_logits(model, input_ids), lora_logits)

    merge_lora(model)
    plain = unload_lora(model)
    assert all(type(plain.get_submodule(p)) is nn.Linear for p in originals)
    assert all(torch.equal(plain.get_submodule(p).weight, expected[p]) for p in originals)


def test_adapter_round_trip(qlora, make_llama, bf16_llama, input_ids, tmp_path):
    save_adapter(qlora, tmp_path)
    reference = _logits(qlora, input_ids)

    fresh = apply_lora(make_llama(dtype=torch.bfloat16), LoraConfig(**QLORA))
    load_adapter(fresh, tmp_path)
    for key, tensor in lora_state_dict(qlora).items():
        assert torch.equal(lora_state_dict(fresh)[key], tensor), key
    assert torch.equal(_logits(fresh, input_ids), reference)
    assert _rel(reference, _logits(bf16_llama, input_ids)) > 0.2  # the adapter matters

    # The same adapter on the unquantized bf16 base: close, up to NF4's error (stated above).
    dense = load_adapter(make_llama(dtype=torch.bfloat16), tmp_path)
    assert not any(isinstance(m.weight, NF4Tensor) for _, m in lora_modules(dense))
    assert _rel(_logits(dense, input_ids), reference) < 0.15


def test_block_size_must_divide_element_count():
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(10, 3))
    with pytest.raises(LoraConfigError) as err:
        apply_lora(model, LoraConfig(match_all_linear=True, quantize_base="nf4"))
    message = str(err.value)
    assert "cannot store 1 (shape [3, 10], 30 elements) in NF4 with nf4_block_size 64" in message
    assert "exclude this module" in message
    # Nothing was changed, so the same model can be retried with another setting.
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())

    apply_lora(model, LoraConfig(match_all_linear=True, quantize_base="nf4", exclude_modules=["1"]))
    assert isinstance(model[0].weight, NF4Tensor) and type(model[1]) is nn.Linear
    small = apply_lora(
        nn.Sequential(nn.Linear(15, 2)),
        LoraConfig(match_all_linear=True, quantize_base="nf4", nf4_block_size=6),
    )
    assert isinstance(small[0].weight, NF4Tensor)


def test_quantize_skip_keeps_those_bases_in_their_dtype_and_trains_them(make_llama, input_ids):
    """`quantize_skip: [lm_head]` (bitsandbytes' default for QLoRA): the adapted head keeps a
    bfloat16 base, every other adapted module NF4; both adapters train; merging writes the
    head's base plus its update."""
    config = LoraConfig(**{**QLORA, "target_modules": ["lm_head"], "quantize_skip": ["lm_head"]})
    model = apply_lora(make_llama(dtype=torch.bfloat16), config)
    modules = dict(lora_modules(model))
    assert len(modules) == 15 and "lm_head" in modules
    assert modules["lm_head"].weight.dtype == torch.bfloat16
    assert not isinstance(modules["lm_head"].weight, NF4Tensor)
    assert all(isinstance(m.weight, NF4Tensor) for p, m in modules.items() if p != "lm_head")
    assert lora_summary(model).quantized_modules == 14
    model(input_ids=input_ids).logits.float().sum().backward()
    assert modules["lm_head"].lora_B.weight.grad is not None
    assert modules["model.layers.0.self_attn.q_proj"].lora_B.weight.grad is not None


def test_quantize_skip_must_name_an_adapted_module_and_needs_quantize_base(make_llama):
    with pytest.raises(LoraConfigError, match="quantize_skip pattern 'lm_head' matches no"):
        apply_lora(make_llama(), LoraConfig(**{**QLORA, "quantize_skip": ["lm_head"]}))
    with pytest.raises(LoraConfigError, match="quantize_base is not set"):
        LoraConfig(dim=4, match_all_linear=True, quantize_skip=["lm_head"])
