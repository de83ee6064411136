"""merge_lora / unmerge_lora / unload_lora against peft's merge_and_unload and plain transformers.

float32 models; merged weights and logits are compared with rtol=1e-5, atol=1e-6 unless stated.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

from automodel.peft import (
    LoraConfig,
    LoraLinear,
    apply_lora,
    lora_modules,
    merge_lora,
    unload_lora,
    unmerge_lora,
)

TOL = dict(rtol=1e-5, atol=1e-6)
# peft calls a transformers API that transformers 5 marks deprecated; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


def _logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits


@pytest.fixture(params=[False, True], ids=["lora", "dora"])
def adapted(request, make_llama, randomize_adapters, copy_adapters):
    """(ours, peft's) with identical random adapters on TARGETS."""
    use_dora = request.param
    ours = make_llama()
    torch.manual_seed(1)
    apply_lora(ours, LoraConfig(dim=4, alpha=8, target_modules=TARGETS, use_dora=use_dora))
    torch.manual_seed(1)
    theirs = get_peft_model(
        make_llama(), PeftLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_dora=use_dora)
    )
    copy_adapters(randomize_adapters(ours, seed=9, std=0.2), theirs)
    return ours, theirs


def test_merge_equals_peft_merge_and_unload(adapted, make_llama, input_ids):
    ours, theirs = adapted
    lora_logits = _logits(ours, input_ids)
    merged_peft = theirs.merge_and_unload()
    merge_lora(ours)
    base = make_llama()
    for path, module in lora_modules(ours):
        assert module.merged
        theirs_weight = merged_peft.get_submodule(path).weight
        torch.testing.assert_close(module.weight, theirs_weight, **TOL)
        assert not torch.allclose(module.weight, base.get_submodule(path).weight, atol=1e-3), path
    torch.testing.assert_close(_logits(ours, input_ids), lora_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_logits(merged_peft, input_ids), _logits(ours, input_ids), **TOL)


def test_unmerge_restores_base(adapted, make_llama, input_ids):
    ours, _ = adapted
    lora_logits = _logits(ours, input_ids)
    base = make_llama()
    merge_lora(ours)
    merge_lora(ours)  # a second merge is a no-op, not a double update
    unmerge_lora(ours)
    for path, module in lora_modules(ours):
        assert not module.merged
        exact = module.use_dora  # DoRA keeps the base copy; LoRA subtracts the update again
        torch.testing.assert_close(
            module.weight,
            base.get_submodule(path).weight,
            rtol=0 if exact else 1e-5,
            atol=0 if exact else 1e-6,
        )
    torch.testing.assert_close(_logits(ours, input_ids), lora_logits, rtol=1e-4, atol=1e-5)


def test_unload_after_merge_gives_plain_transformers_model(
    adapted, make_llama, input_ids, tmp_path
):
    ours, _ = adapted
    lora_logits = _logits(ours, input_ids)
    original_keys = list(make_llama().state_dict())
    assert list(ours.state_dict()) != original_keys  # LoRA adds its tensors...

    unload_lora(merge_lora(ours))
    assert not list(lora_modules(ours))
    for path in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        assert type(ours.get_submodule(path)) is nn.Linear
    assert not any(isinstance(m, LoraLinear) for m in ours.modules())
    assert list(ours.state_dict()) == original_keys  # ...and unloading leaves the HF keys only
    torch.testing.assert_close(_logits(ours, input_ids), lora_logits, rtol=1e-4, atol=1e-5)

    ours.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(
        _logits(reloaded, input_ids), _logits(ours, input_ids), rtol=0, atol=0
    )
    torch.testing.assert_close(_logits(reloaded, input_ids), lora_logits, rtol=1e-4, atol=1e-5)


def test_unload_without_merge_drops_adapters(adapted, make_llama, input_ids):
    ours, _ = adapted
    unload_lora(ours)
    assert list(ours.state_dict()) == list(make_llama().state_dict())
    torch.testing.assert_close(
        _logits(ours, input_ids), _logits(make_llama(), input_ids), rtol=0, atol=0
    )


def test_merged_state_dict_from_a_gathered_state_equals_the_in_place_merge(adapted):
    """The path for sharded models: merging from a full state dict gives the same tensors."""
    from automodel.peft import merged_state_dict

    ours, theirs = adapted
    from_module = merged_state_dict(ours)
    gathered = {k: v.clone() for k, v in ours.state_dict().items()}
    from_state = merged_state_dict(ours, state=gathered)
    assert from_module.keys() == from_state.keys()
    assert not any(".lora_" in k for k in from_state)
    for name, tensor in from_module.items():
        torch.testing.assert_close(from_state[name], tensor, rtol=1e-6, atol=1e-7)
    merged_peft = theirs.merge_and_unload().state_dict()
    for name, tensor in from_state.items():
        torch.testing.assert_close(tensor, merged_peft[name], **TOL)
