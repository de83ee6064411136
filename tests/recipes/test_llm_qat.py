"""finetune.llm's `qat:` section: torchao's fake quantization from a start step, on real layers."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest
import torch
from _doc_commands import extract
from _shared import REPO, SFT
from safetensors import safe_open

from automodel.core.config import ConfigError, load_config
from automodel.core.config._nemo_compat import translate
from automodel.recipes.llm import FinetuneRecipeForCausalLM
from automodel.recipes.llm.finetune import SECTIONS, check

TINY_LLAMA = REPO / "examples/llm_finetune/assets/tiny_llama"


def documented_overrides() -> list[str]:
    """The `qat:` overrides of docs/llm_recipe.md's QAT command (on tiny_sft.yaml)."""
    (command,) = [c for c in extract(REPO / "docs/llm_recipe.md") if "--+qat." in c.text]
    words = shlex.split(command.text)
    return words[words.index(str(SFT.relative_to(REPO))) + 1 :]


def _recipe(run_dir: Path, data: Path, short_run, *extra: str) -> FinetuneRecipeForCausalLM:
    cfg = load_config(SFT, short_run(run_dir, data, 3, 2, *extra), sections=SECTIONS)
    recipe = FinetuneRecipeForCausalLM(cfg)
    recipe.setup()
    return recipe


def _reference(layer: torch.nn.Linear, scheme: str) -> torch.nn.Module:
    """torchao's own QAT linear layer of `scheme` (the legacy quantizers' class, as NeMo
    AutoModel builds it: bfloat16 weight scales) holding `layer`'s weight and bias."""
    from torchao.quantization.qat.linear import (
        Int4WeightOnlyQATLinear,
        Int8DynActInt4WeightQATLinear,
    )

    shape = (layer.in_features, layer.out_features, layer.bias is not None)
    if scheme == "int8_dynact_int4weight":
        reference = Int8DynActInt4WeightQATLinear(
            *shape, groupsize=32, precision=layer.weight.dtype, scales_precision=torch.bfloat16
        )
    else:  # inner_k_tiles only says how a later conversion packs the weight
        reference = Int4WeightOnlyQATLinear(
            *shape, groupsize=32, inner_k_tiles=2, precision=layer.weight.dtype
        )
    reference.weight, reference.bias = layer.weight, layer.bias
    return reference


@pytest.mark.parametrize("scheme", ["int8_dynact_int4weight", "int4_weight_only"])
def test_plain_before_the_start_step_then_torchaos_fake_quantization(
    scheme, tmp_path, small_data, short_run, monkeypatch_module
):
    """Before `start_step` the model computes as the plain one; from it on every selected
    linear layer's output is torchao's fake-quantized one for the same weight and input."""
    from torchao.quantization.qat import FakeQuantizedLinear

    from automodel.core.models import AutoModelForCausalLM

    qat = ["--+qat.group_size=32", "--+qat.start_step=2", f"--+qat.scheme={scheme}"]
    recipe = _recipe(tmp_path, small_data, short_run, *qat)
    model, fake_quant = recipe.unwrapped.eval(), recipe.run.fake_quant
    plain = AutoModelForCausalLM.from_config(str(TINY_LLAMA), seed=1234).eval()
    quantized = {n for n, m in model.named_modules() if isinstance(m, FakeQuantizedLinear)}
    # every linear layer but down_proj: its 176 input features are no multiple of 32
    linears = {n for n, m in plain.named_modules() if isinstance(m, torch.nn.Linear)}
    assert quantized == {n for n in linears if not n.endswith("down_proj")}
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    assert model.state_dict().keys() == plain.state_dict().keys()  # no buffer added
    ids = torch.randint(4, 64, (2, 12), generator=torch.Generator().manual_seed(0))

    fake_quant.at_step(1)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain(ids).logits)

    fake_quant.at_step(2)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__(name, (args[0], out))
        )
        for name in quantized
    ]
    with torch.no_grad():
        logits = model(ids).logits
        for name, (x, out) in seen.items():
            layer = model.get_submodule(name)
            assert torch.equal(out, _reference(layer, scheme)(x)), name
            assert not torch.equal(out, torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert seen.keys() == quantized
    assert not torch.allclose(logits, plain(ids).logits, atol=1e-3)
    for hook in hooks:
        hook.remove()


def test_documented_qat_run_saves_hf_checkpoints_and_resumes_with_fake_quantization_on(
    tmp_path, small_data, short_run, run_recipe, jsonl_rows, resume_dir_from, monkeypatch_module,
    caplog,
):  # fmt: skip
    """docs/llm_recipe.md's QAT command (fake quantization from step 2 of 3): the checkpoint
    holds the plain model's keys and loads in transformers; a run resumed at step 2 trains
    step 3 fake-quantized, exactly as the uninterrupted run did."""
    from transformers import AutoConfig, AutoModelForCausalLM

    qat = [*documented_overrides(), "--qat.start_step=2"]
    quick = ["--step_scheduler.global_batch_size=2", "--~validation_dataset"]  # 1 micro-batch
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    with caplog.at_level("INFO", logger="automodel.recipes"):
        uninterrupted = run_recipe(SFT, short_run(full, small_data, 3, 2, *qat, *quick))
    assert "qat: fake quantization on from step 2" in caplog.text

    model_dir = full / "checkpoints/epoch_0_step_2/model"
    plain = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY_LLAMA))
    plain.save_pretrained(tmp_path / "plain")
    with (
        safe_open(model_dir / "model.safetensors", "pt") as saved,
        safe_open(tmp_path / "plain/model.safetensors", "pt") as reference,
    ):
        assert set(saved.keys()) == set(reference.keys())
    loaded, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    assert type(loaded.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert not any(info.values()), info

    resume_dir_from(full, resumed, 2)
    recipe = run_recipe(SFT, short_run(resumed, small_data, 3, 2, *qat, *quick))
    assert recipe.run.fake_quant.enabled
    rows, reference = (jsonl_rows(run / "training.jsonl") for run in (resumed, full))
    assert rows == reference  # step 3 trained as it was, fake-quantized (the rows are exact)
    weights = uninterrupted.unwrapped.state_dict()
    for name, tensor in recipe.unwrapped.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        (["--+qat.scheme=int2"], "qat.scheme", "expected one of int8_dynact_int4weight"),
        (["--+qat.group_size=0"], "qat.group_size", "expected an integer >= 1"),
        (
            ["--+qat.scheme=int4_weight_only", "--+qat.group_size=48"],
            "qat.group_size",
            "int4_weight_only takes group_size 32, 64, 128, 256",
        ),
        (["--+qat.start_step=0"], "qat.start_step", "1: fake quantization from the first step"),
        (["--+qat.start_step=1001"], "qat.start_step", "fake quantization would never start"),
        (["--+qat.skip_modules=lm_head"], "qat.skip_modules", "expected a list"),
        (["--+qat.start_step=2", "--+fp8.emulate=true"], "qat", "with float8 training (fp8:)"),
    ],
)
def test_bad_qat_values_are_config_errors(overrides, key, message, monkeypatch_module):
    with pytest.raises(ConfigError) as caught:
        check(load_config(SFT, overrides, sections=SECTIONS))
    (problem,) = caught.value.problems
    assert problem.key == key and message in problem.message, problem


def test_qat_with_lora_tp_or_without_torchao_is_refused_naming_what_to_do(
    monkeypatch, monkeypatch_module
):
    lora = load_config(REPO / "examples/llm_finetune/tiny_lora.yaml", ["--+qat.start_step=1"])
    with pytest.raises(ConfigError, match=r"not supported with LoRA adapters \(peft:\)"):
        check(lora)
    monkeypatch.setenv("WORLD_SIZE", "2")
    tp = load_config(SFT, ["--+qat.start_step=1", "--+distributed.tp_size=2"], sections=SECTIONS)
    with pytest.raises(ConfigError, match=r"tensor parallelism \(tp_size > 1\) is not supported"):
        check(tp)
    monkeypatch.delenv("WORLD_SIZE")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else find_spec(name, *a)
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"pip install 'automodel-recipes\[qat\]'"):
        check(load_config(SFT, ["--+qat.start_step=1"], sections=SECTIONS))


def test_a_head_a_fused_loss_reads_or_no_layer_at_all_is_a_config_error(
    tmp_path, small_data, short_run, monkeypatch_module
):
    """Found when the model is built: the fused loss would bypass the fake-quantized head; a
    group size no layer's input features are a multiple of leaves nothing to train."""
    fused = ["--loss_fn._target_=automodel.core.losses.FusedLinearCrossEntropy"]
    with pytest.raises(ConfigError, match=r"add lm_head to qat\.skip_modules"):
        _recipe(tmp_path, small_data, short_run, "--+qat.group_size=32", *fused)
    with pytest.raises(ConfigError, match="no linear layer to fake-quantize"):
        _recipe(tmp_path, small_data, short_run, "--+qat.group_size=128")


THEIR_QAT = {
    "enabled": True,
    "fake_quant_after_n_steps": 1,
    "qat_config": {
        "_target_": "nemo_automodel.components.quantization.qat.QATConfig",
        "quantizer_type": "int4_weight_only",
        "groupsize": 128,
    },
}


def test_their_qat_section_is_ours() -> None:
    """Their QATConfig keys in ours; N steps without fake quantization: ours from step N + 1;
    their fused loss never fake-quantizes the head, so ours leaves it out; off is dropped."""
    where = {
        "qat.fake_quant_after_n_steps": "cfg.yaml:9",
        "qat.qat_config.groupsize": "cfg.yaml:12",
    }
    t = translate({"qat": THEIR_QAT}, where, "cfg.yaml")
    assert t.data["qat"] == {"scheme": "int4_weight_only", "group_size": 128, "start_step": 2}
    assert t.where["qat.start_step"] == "cfg.yaml:9" and t.where["qat.group_size"] == "cfg.yaml:12"

    fused = {"_target_": "nemo_automodel.components.loss.linear_ce.FusedLinearCrossEntropy"}
    t = translate({"qat": {**THEIR_QAT, "fake_quant_after_n_steps": None}, "loss_fn": fused}, {})
    assert t.data["qat"]["start_step"] == 1 and t.data["qat"]["skip_modules"] == ["lm_head"]
    assert any("their FusedLinearCrossEntropy reads the head's weight" in n for n in t.notes)

    off = translate({"qat": {**THEIR_QAT, "enabled": False}}, {}, "cfg.yaml")
    assert "qat" not in off.data

    padded = {**THEIR_QAT["qat_config"], "padding_allowed": True}
    with pytest.raises(ConfigError) as caught:
        translate({"qat": {**THEIR_QAT, "qat_config": padded}}, {}, "cfg.yaml")
    assert [p.key for p in caught.value.problems] == ["qat.qat_config.padding_allowed"]
