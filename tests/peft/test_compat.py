"""Numerical compatibility with Hugging Face peft: same seed, same adapters, same outputs and grads.

Tolerance: float32 models, compared with rtol=1e-5 and atol=1e-6 (our implementation follows
peft's op order, so differences, if any, are last-bit rounding; a wrong scaling, placement or
initialisation gives differences of order 1e-2 or more).
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from peft.tuners.lora import LoraLayer

from automodel.peft import LoraConfig, LoraLinear, apply_lora, lora_modules

TOL = dict(rtol=1e-5, atol=1e-6)
# peft calls a transformers API that transformers 5 marks deprecated; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# (id, our LoraConfig kwargs, peft LoraConfig kwargs)
CASES = [
    (
        "lora",
        dict(dim=8, alpha=16, target_modules=ALL),
        dict(r=8, lora_alpha=16, target_modules=ALL),
    ),
    (
        "dora",
        dict(dim=4, alpha=8, target_modules=ALL, use_dora=True),
        dict(r=4, lora_alpha=8, target_modules=ALL, use_dora=True),
    ),
    (
        "rslora",
        dict(dim=16, alpha=8, target_modules=ALL, use_rslora=True),
        dict(r=16, lora_alpha=8, target_modules=ALL, use_rslora=True),
    ),
    (
        "gaussian",
        dict(dim=8, alpha=16, target_modules=ALL, init_a="gaussian"),
        dict(r=8, lora_alpha=16, target_modules=ALL, init_lora_weights="gaussian"),
    ),
    (
        "subset_q_v",
        dict(dim=8, alpha=32, target_modules=["q_proj", "v_proj"]),
        dict(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"]),
    ),
    (
        "all_linear",
        dict(dim=4, alpha=4, match_all_linear=True),
        dict(r=4, lora_alpha=4, target_modules="all-linear"),
    ),
]
IDS = [c[0] for c in CASES]


def _pair(make_llama, ours_kwargs, peft_kwargs, seed=1):
    """Our LoRA model and peft's, built from identical bases with the same RNG seed."""
    ours = make_llama()
    torch.manual_seed(seed)
    apply_lora(ours, LoraConfig(**ours_kwargs))
    theirs_base = make_llama()
    torch.manual_seed(seed)
    theirs = get_peft_model(theirs_base, PeftLoraConfig(task_type="CAUSAL_LM", **peft_kwargs))
    return ours, theirs


def _peft_lora_paths(peft_model):
    return [
        name.removeprefix("base_model.model.")
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    ]


@pytest.mark.parametrize(("case", "ours_kwargs", "peft_kwargs"), CASES, ids=IDS)
def test_same_modules_and_same_initial_adapters(
    make_llama, peft_name, case, ours_kwargs, peft_kwargs
):
    ours, theirs = _pair(make_llama, ours_kwargs, peft_kwargs)
    ours_paths = [path for path, _ in lora_modules(ours)]
    assert ours_paths == _peft_lora_paths(theirs)
    expected_count = {"subset_q_v": 4}.get(case, 14)
    assert len(ours_paths) == expected_count
    assert "lm_head" not in ours_paths

    theirs_params = dict(theirs.named_parameters())
    for path, module in lora_modules(ours):
        a = module.lora_A.weight
        a_peft = theirs_params[peft_name(f"{path}.lora_A.weight")]
        assert torch.equal(a, a_peft), f"{path}: initial A differs from peft's"
        assert a.abs().sum() > 0
        assert torch.count_nonzero(module.lora_B.weight) == 0
        if module.use_dora:
            m_peft = theirs_params[peft_name(f"{path}.lora_magnitude_vector")]
            torch.testing.assert_close(module.lora_magnitude_vector, m_peft, **TOL)
    if case == "gaussian":  # std 1/r, not kaiming-uniform's bound 1/sqrt(in_features)
        a = next(lora_modules(ours))[1].lora_A.weight
        assert a.abs().max() > 1 / 32**0.5


@pytest.mark.parametrize(("case", "ours_kwargs", "peft_kwargs"), CASES, ids=IDS)
def test_same_logits_and_grads(
    make_llama,
    input_ids,
    randomize_adapters,
    copy_adapters,
    peft_name,
    case,
    ours_kwargs,
    peft_kwargs,
):
    ours, theirs = _pair(make_llama, ours_kwargs, peft_kwargs)
    copy_adapters(randomize_adapters(ours, seed=5), theirs)
    base_logits = make_llama()(input_ids).logits

    with torch.no_grad():
        ours_logits = ours(input_ids).logits
        theirs_logits = theirs(input_ids=input_ids).logits
    torch.testing.assert_close(ours_logits, theirs_logits, **TOL)
    assert not torch.allclose(ours_logits, base_logits, atol=1e-3)  # the adapters do act

    ours.train()
    theirs.train()
    ours(input_ids, labels=input_ids).loss.backward()
    theirs(input_ids=input_ids, labels=input_ids).loss.backward()
    ours_trainable = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    theirs_trainable = {n: p for n, p in theirs.named_parameters() if p.requires_grad}
    assert {peft_name(n) for n in ours_trainable} == set(theirs_trainable)
    for name, param in ours_trainable.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
        torch.testing.assert_close(
            param.grad,
            theirs_trainable[peft_name(name)].grad,
            **TOL,
            msg=lambda m, n=name: f"{n}: {m}",
        )


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_dropout_placement_matches_peft(
    make_llama, input_ids, randomize_adapters, copy_adapters, use_dora
):
    """Default 'pre' dropout (on the LoRA input) draws the same mask as peft for the same seed."""
    kwargs = dict(
        dim=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=use_dora
    )
    peft_kwargs = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    ours, theirs = _pair(
        make_llama,
        dict(kwargs, dropout=0.3),
        dict(peft_kwargs, lora_dropout=0.3, use_dora=use_dora),
    )
    assert all(m.dropout_position == "pre" for _, m in lora_modules(ours))
    copy_adapters(randomize_adapters(ours, seed=2, std=0.5), theirs)
    ours.train()
    theirs.train()
    torch.manual_seed(11)
    ours_out = ours(input_ids).logits
    torch.manual_seed(11)
    theirs_out = theirs(input_ids=input_ids).logits
    torch.testing.assert_close(ours_out, theirs_out, **TOL)

    torch.manual_seed(12)  # another mask gives another output: dropout is active in both
    assert not torch.allclose(ours(input_ids).logits, ours_out, atol=1e-4)
    with torch.no_grad():  # and eval mode turns it off in both
        torch.testing.assert_close(
            ours.eval()(input_ids).logits, theirs.eval()(input_ids=input_ids).logits, **TOL
        )


def test_post_dropout_differs_from_peft(make_llama, input_ids, randomize_adapters, copy_adapters):
    """The 'post' placement is a real alternative (the comparison above is not vacuous)."""
    targets = ["q_proj", "v_proj"]
    ours, theirs = _pair(
        make_llama,
        dict(dim=4, alpha=8, target_modules=targets, dropout=0.3, dropout_position="post"),
        dict(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.3),
    )
    copy_adapters(randomize_adapters(ours, seed=2, std=0.5), theirs)
    ours.train()
    theirs.train()
    torch.manual_seed(11)
    ours_out = ours(input_ids).logits
    torch.manual_seed(11)
    theirs_out = theirs(input_ids=input_ids).logits
    assert not torch.allclose(ours_out, theirs_out, atol=1e-4)
    assert all(isinstance(m, LoraLinear) for _, m in lora_modules(ours))


def test_lora_disabled_matches_peft_disable_adapter(
    make_llama, input_ids, randomize_adapters, copy_adapters
):
    from automodel.peft import lora_disabled

    ours, theirs = _pair(make_llama, dict(match_all_linear=True), dict(target_modules="all-linear"))
    copy_adapters(randomize_adapters(ours), theirs)
    base_logits = make_llama()(input_ids).logits
    with torch.no_grad():
        with lora_disabled(ours):
            disabled = ours(input_ids).logits
        with theirs.disable_adapter():
            theirs_disabled = theirs(input_ids=input_ids).logits
        enabled = ours(input_ids).logits
    torch.testing.assert_close(disabled, base_logits, rtol=0, atol=0)
    torch.testing.assert_close(disabled, theirs_disabled, **TOL)
    assert not torch.allclose(enabled, base_logits, atol=1e-3)
    assert all(not m.disabled for _, m in lora_modules(ours))
