"""MoEConfig validation and package hygiene."""

from __future__ import annotations

import subprocess
import sys

import pytest

from automodel.moe import MoEConfig

BASE = {
    "hidden_size": 32,
    "moe_intermediate_size": 16,
    "n_routed_experts": 8,
    "experts_per_token": 2,
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_size": 0}, r"MoEConfig.hidden_size=0 must be an int >= 1"),
        ({"experts_per_token": 9}, r"experts_per_token=9 must be <= n_routed_experts=8"),
        (
            {"score_func": "tanh"},
            r"score_func='tanh' is not one of \['softmax', 'sigmoid', 'sqrtsoftplus'\]",
        ),
        ({"routing": "hash"}, r"routing='hash' needs hash_vocab_size"),
        ({"hash_vocab_size": 64}, r"hash_vocab_size=64 is the table of hash routing: set routing"),
        ({"routing": "hash", "hash_vocab_size": 0}, r"hash_vocab_size=0 must be an int >= 1"),
        ({"activation": "swish"}, r"activation='swish' is not one of \['swiglu'"),
        ({"balancing": "loss"}, r"balancing='loss' is not one of \['none', 'aux_loss', 'bias'\]"),
        ({"backend": "cuda"}, r"backend='cuda' is not one of"),
        ({"n_groups": 3}, r"n_groups=3 must divide n_routed_experts=8"),
        ({"n_groups": 4, "topk_groups": 5}, r"topk_groups=5 must be <= n_groups=4"),
        ({"n_groups": 8, "topk_groups": 1}, r"topk_groups=1 groups of 1 experts hold fewer"),
        ({"aux_loss_coeff": -1.0}, r"aux_loss_coeff=-1.0 must be a number >= 0"),
        ({"n_shared_experts": -1}, r"n_shared_experts=-1 must be an int >= 0"),
        ({"shared_expert_gate": True}, r"shared_expert_gate=True needs n_shared_experts >= 1"),
        ({"input_jitter": 1.5}, r"input_jitter=1.5 must be < 1"),
        ({"activation_limit": 0}, r"activation_limit=0 must be a number > 0"),
        ({"activation_alpha": -1.0}, r"activation_alpha=-1.0 must be a number > 0"),
        (
            {"activation": "relu2", "gate_up_interleaved": True},
            r"gate_up_interleaved=True needs a gated activation .*not activation='relu2'",
        ),
        (
            {"activation": "gelu", "activation_limit": 7.0},
            r"activation_limit=7.0 needs a gated activation \['swiglu', 'geglu', 'swiglu_oai'\]",
        ),
    ],
)
def test_config_errors_name_field_value_and_allowed(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MoEConfig(**{**BASE, **changes})


def test_config_derived_properties_and_replace() -> None:
    cfg = MoEConfig(**BASE, n_shared_experts=2)
    assert cfg.gated and cfg.shared_size == 32 and not cfg.has_selection_bias
    assert cfg.replace(balancing="bias").has_selection_bias
    hashed = cfg.replace(routing="hash", hash_vocab_size=64, balancing="bias")
    assert not hashed.has_selection_bias  # the table chooses: no bias to move
    assert not cfg.replace(activation="relu2").gated
    with pytest.raises(TypeError, match="unknown MoEConfig field"):
        cfg.replace(top_k=3)


def test_import_needs_only_torch() -> None:
    code = (
        "import sys, automodel.moe; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'transformers' "
        "or (m.startswith('automodel.') and not m.startswith('automodel.moe'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
