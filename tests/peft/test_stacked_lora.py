"""LoRA on stacked MoE expert weights (`target_parameters`), against Hugging Face peft.

Tiny real MoE models (Qwen3-MoE: experts stored [E, out, in]; gpt-oss: [E, in, out],
`is_transposed`), with transformers' own experts and with automodel.moe's grouped experts.
The sizes are chosen so that no stacked weight is square: a factor laid out the wrong way
round fails to load instead of loading into the wrong place. Logits are compared with
rtol=1e-5, atol=1e-6 (float32; a wrong layout or scaling differs by 1e-2 or more).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from automodel.moe import patch_hf_moe, shard_experts
from automodel.peft import (
    AdapterError,
    LoraConfig,
    LoraConfigError,
    apply_lora,
    load_adapter,
    lora_disabled,
    lora_parameters,
    lora_state_dict,
    lora_summary,
    merge_lora,
    merged_state_dict,
    save_adapter,
    unload_lora,
    unmerge_lora,
)

TOL = dict(rtol=1e-5, atol=1e-6)
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
_SMALL = dict(vocab_size=64, hidden_size=24, num_hidden_layers=2, num_attention_heads=3)
_SMALL |= dict(num_key_value_heads=1, head_dim=8, num_experts_per_tok=2)
FAMILIES = {  # H=24, I=8: gate_up [E, 16, 24], down [E, 24, 8]
    "qwen3_moe": dict(moe_intermediate_size=8, num_experts=4),
    "gpt_oss": dict(  # [E, in, out] with biases
        intermediate_size=8, num_local_experts=4, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
    ),
}  # fmt: skip
_BASES: dict[str, torch.nn.Module] = {}
IDS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))


def base(family: str = "qwen3_moe") -> torch.nn.Module:
    """A fresh copy of the family's tiny model (the same weights every call), in eval mode."""
    if family not in _BASES:
        config = AutoConfig.for_model(family, **_SMALL, **FAMILIES[family])
        with torch.random.fork_rng():
            torch.manual_seed(0)
            _BASES[family] = AutoModelForCausalLM.from_config(config).eval()
    return copy.deepcopy(_BASES[family])


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def adapted(family: str, swapped: bool, randomize_adapters, **config) -> torch.nn.Module:
    model = base(family)
    if swapped:
        patch_hf_moe(model, balancing="none")
    apply_lora(model, LoraConfig(dim=2, alpha=6, target_parameters=EXPERTS, **config))
    randomize_adapters(model, seed=4, std=0.3)
    return model


@pytest.mark.parametrize(
    ("family", "swapped"),
    [("qwen3_moe", False), ("qwen3_moe", True), ("gpt_oss", False), ("gpt_oss", True)],
    ids=["transformers", "automodel_moe", "transposed_transformers", "transposed_automodel_moe"],
)
def test_peft_loads_our_expert_adapter_with_the_same_logits(
    family, swapped, randomize_adapters, tmp_path
):
    ours = adapted(family, swapped, randomize_adapters, target_modules=["q_proj"])
    save_adapter(ours, tmp_path)

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    layers = [f"model.layers.{i}.mlp.experts" for i in range(2)]
    assert config["target_parameters"] == [f"{m}.{p}" for m in layers for p in ("gate_up_proj", "down_proj")]  # fmt: skip
    assert config["target_modules"] == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]  # fmt: skip
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    # peft nests one wrapper per parameter, the module's last one outermost; r*E = 8
    h, up, inner = 24, 16, 8
    prefix = "base_model.model.model.layers.0.mlp.experts."
    expected = {"base_layer.lora_A.weight": [8, h], "base_layer.lora_B.weight": [up, 8],
                "lora_A.weight": [8, inner], "lora_B.weight": [h, 8]}  # fmt: skip
    if family == "gpt_oss":  # [E, in, out]: the same factors, in and out read the other way
        expected = {"base_layer.lora_A.weight": [8, h], "base_layer.lora_B.weight": [2 * inner, 8],
                    "lora_A.weight": [8, inner], "lora_B.weight": [h, 8]}  # fmt: skip
    assert {
        k.removeprefix(prefix): v for k, v in shapes.items() if k.startswith(prefix)
    } == expected

    theirs = PeftModel.from_pretrained(base(family), tmp_path).eval()
    torch.testing.assert_close(logits(ours), logits(theirs), **TOL)
    with lora_disabled(ours):
        torch.testing.assert_close(logits(ours), logits(base(family)), **TOL)
    assert not torch.allclose(logits(ours), logits(base(family)), atol=1e-2)  # they do act


def test_an_expert_adapter_peft_saved_loads_here(tmp_path):
    """peft's own file (its key nesting, its sorted `target_parameters`) loads into ours."""
    theirs = get_peft_model(
        base(), PeftLoraConfig(r=2, lora_alpha=4, target_modules=[], target_parameters=EXPERTS)
    )
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    theirs.save_pretrained(tmp_path)
    ours = load_adapter(base(), tmp_path)
    assert [p for p, _ in lora_parameters(ours)][:2] == [f"model.layers.0.{p}" for p in EXPERTS]
    torch.testing.assert_close(logits(ours), logits(theirs.eval()), **TOL)


def test_only_the_expert_adapters_learn(randomize_adapters):
    model = adapted("qwen3_moe", True, randomize_adapters)
    summary = lora_summary(model)
    assert summary.modules == () and len(summary.parameters) == 4
    assert summary.trainable_params == sum(t.numel() for t in lora_state_dict(model).values())
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    for name, param in model.named_parameters():
        factor = ".lora_A." in name or ".lora_B." in name
        assert param.requires_grad == factor, name
        assert (param.grad is not None and param.grad.abs().sum() > 0) == factor, name


@pytest.mark.parametrize("swapped", [False, True], ids=["transformers", "automodel_moe"])
def test_merge_unmerge_unload_and_the_merged_export(swapped, randomize_adapters):
    model = adapted("qwen3_moe", swapped, randomize_adapters)
    expected = logits(model)
    experts = model.model.layers[0].mlp.experts
    before = experts._parameters["down_proj"].detach().clone()

    exported = merged_state_dict(model)  # the plain model's keys, with merged experts
    plain = base()
    assert set(exported) == set(plain.state_dict())
    from_state = merged_state_dict(model, state=model.state_dict())  # as from FSDP2's full state
    for name, tensor in exported.items():
        torch.testing.assert_close(from_state[name], tensor, **TOL)
    plain.load_state_dict(exported)
    torch.testing.assert_close(logits(plain), expected, **TOL)

    merge_lora(model)
    assert not torch.allclose(experts._parameters["down_proj"], before)
    torch.testing.assert_close(logits(model), expected, **TOL)
    unmerge_lora(model)
    torch.testing.assert_close(experts._parameters["down_proj"], before, **TOL)
    merge_lora(model)
    unload_lora(model)
    assert type(experts) is type(plain.model.layers[0].mlp.experts) or swapped
    assert not [k for k in model.state_dict() if "lora_" in k or "base_layer" in k]
    torch.testing.assert_close(logits(model), expected, **TOL)


def test_fsdp2_shards_expert_adapters_like_other_weights(single_rank_group, randomize_adapters):
    """Under FSDP2 each forward computes with the unsharded weight and factors; the adapters'
    gradients are the unsharded model's."""
    from torch.distributed.fsdp import fully_shard

    plain = adapted("qwen3_moe", True, randomize_adapters)
    sharded = copy.deepcopy(plain)
    for layer in sharded.model.layers:
        fully_shard(layer)
    fully_shard(sharded)
    grads = []
    for model in (plain, sharded):
        model.train()
        model(input_ids=IDS, labels=IDS).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if "experts.lora_" in n})
    assert len(grads[1]) == 4
    for name, grad in grads[1].items():
        torch.testing.assert_close(grad.full_tensor(), grads[0][name], **TOL)


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])
def test_a_part_of_the_update_comes_from_its_experts_factors_only(family, randomize_adapters):
    """An expert-parallel rank's update: experts 1..2 of 4 (an offset that is no multiple of
    their count) and a part of the other dimensions equal that part of the whole update, and
    backward reaches only those experts' rows of A and columns k*E + e of B, as in the whole."""
    adapter = adapted(family, True, randomize_adapters).model.layers[0].mlp.experts._lora_stacked
    adapter = adapter["down_proj"]
    block = (slice(1, 3), slice(2, 7), slice(1, None))
    grads = []
    for part in (lambda: adapter.delta_weight(block), lambda: adapter.delta_weight()[block]):
        adapter.lora_A.grad = adapter.lora_B.grad = None
        delta = part()
        (delta * torch.linspace(-1, 1, delta.numel()).view_as(delta)).sum().backward()
        grads.append((delta.detach(), adapter.lora_A.grad, adapter.lora_B.grad))
    for ours, whole in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(ours, whole, rtol=0, atol=0)
    r, e = adapter.rank, adapter.num_experts  # A row e*r + k, B column k*E + e
    rows = torch.zeros(r * e, dtype=torch.bool)
    rows[1 * r : 3 * r] = True
    columns = torch.tensor([c % e in (1, 2) for c in range(r * e)])
    _, grad_a, grad_b = grads[0]
    assert grad_a[rows].abs().sum(dim=1).min() > 0 and not grad_a[~rows].any()
    assert grad_b[:, columns].abs().sum(dim=0).min() > 0 and not grad_b[:, ~columns].any()


def test_expert_parallel_weights_adapt_their_own_experts(single_rank_group, randomize_adapters):
    """shard_experts after LoRA (the experts become Shard(0) DTensors, here all on one rank):
    the forward reads each adapted weight as a DTensor laid out as the weight, and logits,
    gradients and merge/unmerge equal the unsharded model's."""
    from torch.distributed.tensor import DTensor, Partial, Shard

    from automodel.peft._stacked import local_block

    plain = adapted("qwen3_moe", True, randomize_adapters)
    sharded = copy.deepcopy(plain)
    shard_experts(sharded, None)
    experts = sharded.model.layers[0].mlp.experts
    weight = experts._parameters["down_proj"]
    assert local_block(weight) == (slice(0, 4), slice(0, 24), slice(0, 8))
    seen = []
    experts.register_forward_pre_hook(lambda m, args: seen.append(m.down_proj))
    grads = []
    for model in (plain, sharded):
        model.train()
        out = model(input_ids=IDS, labels=IDS)
        out.loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert isinstance(seen[0], DTensor) and seen[0].placements == (Shard(0),)
    assert len(grads[1]) == 8
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, **TOL)
    torch.testing.assert_close(logits(sharded), logits(plain), **TOL)

    before = weight.full_tensor().clone()
    merge_lora(plain)
    merge_lora(sharded)
    merged = plain.model.layers[0].mlp.experts._parameters["down_proj"]
    assert not torch.allclose(merged, before)
    torch.testing.assert_close(weight.full_tensor(), merged, **TOL)
    unmerge_lora(sharded)
    torch.testing.assert_close(weight.full_tensor(), before, **TOL)
    partial = DTensor.from_local(torch.zeros(4, 2, 2), weight.device_mesh, [Partial()])
    with pytest.raises(RuntimeError, match="holds partial sums"):
        local_block(partial)


def test_bad_expert_targets_say_what_exists(tmp_path):
    cases = {
        "*.q_proj.weight": r"matches only model.layers.0.self_attn.q_proj.weight \[24, 24\].*not stacked",
        "*.experts.up_proj": "Stacked weights in this model include: model.layers.0.mlp.experts.gate_up_proj",
    }  # fmt: skip
    for pattern, message in cases.items():
        with pytest.raises(LoraConfigError, match=message):
            apply_lora(base(), LoraConfig(target_parameters=[pattern]))
    with pytest.raises(LoraConfigError, match="use_dora cannot be combined with target_parameters"):
        LoraConfig(target_parameters=EXPERTS, use_dora=True)

    model = apply_lora(base(), LoraConfig(target_parameters=EXPERTS))
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "peft_version": "0.18.1"}))
    with pytest.raises(AdapterError, match=r"peft 0\.18\.1, which lays out the LoRA factors"):
        load_adapter(base(), tmp_path)


def test_activation_checkpointing_recomputes_the_adapted_weights(randomize_adapters):
    """Checkpointed layers drop the adapted copies and recompute them: the same gradients."""
    grads, lora = [], adapted("qwen3_moe", True, randomize_adapters)
    for checkpointing in (False, True):
        model = copy.deepcopy(lora).train()
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        model(input_ids=IDS, labels=IDS).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert len(grads[1]) == 8  # A and B of 2 weights in 2 layers
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, **TOL)
