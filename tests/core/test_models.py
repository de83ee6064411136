"""Tests of automodel.core.models: building causal LMs from configs and checkpoints, tokenizers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import _shared
import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, LlamaConfig, ViTConfig

from automodel.core.config import UserError, instantiate
from automodel.core.models import (
    AutoModelForCausalLM,
    load_model_config,
    load_tokenizer,
    repair_embedding_rows,
    resolve_dtype,
)

TINY_LLAMA = {**_shared.TINY_LLAMA, "vocab_size": 128}
TINY_QWEN3 = {"model_type": "qwen3", **TINY_LLAMA, "head_dim": 8}
TINY_GPT2 = {"model_type": "gpt2", "vocab_size": 128, "n_embd": 32, "n_layer": 2, "n_head": 4}


@pytest.fixture
def llama_dir(tmp_path: Path) -> Path:
    """A directory holding only the config.json of a tiny Llama."""
    out = tmp_path / "tiny-llama"
    LlamaConfig(**TINY_LLAMA).save_pretrained(out)
    assert (out / "config.json").is_file()
    return out


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _forward_logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 9, 17, 3]])
    with torch.no_grad():
        return model(input_ids=ids).logits


# -- from_config ---------------------------------------------------------------------------
def test_from_config_same_seed_gives_identical_weights(llama_dir: Path):
    a = AutoModelForCausalLM.from_config(llama_dir, seed=123)
    b = AutoModelForCausalLM.from_config(llama_dir / "config.json", seed=123)
    c = AutoModelForCausalLM.from_config(llama_dir, seed=124)
    assert type(a).__name__ == "LlamaForCausalLM"
    assert _same_weights(a, b)
    assert not _same_weights(a, c)
    assert _forward_logits(a).shape == (1, 5, 128)


def test_seeded_build_leaves_the_global_rng_alone(llama_dir: Path):
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    AutoModelForCausalLM.from_config(llama_dir, seed=0)
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize(
    ("torch_dtype", "expected"),
    [
        ("float32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        (torch.float16, torch.float16),
    ],
)
def test_from_config_dtype(llama_dir: Path, torch_dtype, expected):
    model = AutoModelForCausalLM.from_config(llama_dir, torch_dtype=torch_dtype, seed=0)
    assert {p.dtype for p in model.parameters()} == {expected}
    assert model.config.dtype == expected


def test_from_config_default_dtype_is_float32(llama_dir: Path):
    model = AutoModelForCausalLM.from_config(llama_dir)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_unknown_dtype_lists_the_valid_ones(llama_dir: Path):
    with pytest.raises(UserError) as err:
        AutoModelForCausalLM.from_config(llama_dir, torch_dtype="float8")
    msg = str(err.value)
    assert "'float8'" in msg
    for name in ("auto", "bfloat16", "float16", "float32"):
        assert name in msg
    with pytest.raises(UserError):
        resolve_dtype(torch.int64)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attn_implementation_is_applied(llama_dir: Path, attn: str):
    model = AutoModelForCausalLM.from_config(llama_dir, attn_implementation=attn, seed=0)
    assert model.config._attn_implementation == attn
    assert _forward_logits(model).shape == (1, 5, 128)


def test_meta_init_allocates_no_storage(llama_dir: Path):
    model = AutoModelForCausalLM.from_config(llama_dir, init_device="meta", torch_dtype="bfloat16")
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and all(t.is_meta for t in model.parameters())
    assert all(t.device.type == "meta" for t in model.parameters())
    assert model.model.embed_tokens.weight.shape == (128, 32)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    model.to_empty(device="cpu")  # can be materialised later, e.g. after sharding
    assert not any(p.is_meta for p in model.parameters())


def test_config_overrides_do_not_mutate_the_input():
    config = LlamaConfig(**TINY_LLAMA)
    model = AutoModelForCausalLM.from_config(config, num_hidden_layers=1, seed=0)
    assert len(model.model.layers) == 1
    assert config.num_hidden_layers == 2
    assert config.dtype is None


@pytest.mark.parametrize(
    ("config", "cls_name"),
    [
        (TINY_QWEN3, "Qwen3ForCausalLM"),
        (TINY_GPT2, "GPT2LMHeadModel"),
        ({"model_type": "llama", **TINY_LLAMA}, "LlamaForCausalLM"),
    ],
)
def test_any_causal_lm_builds_from_a_dict(config: dict, cls_name: str):
    a = AutoModelForCausalLM.from_config(config, seed=3)
    b = AutoModelForCausalLM.from_config(dict(config), seed=3)
    assert type(a).__name__ == cls_name
    assert _same_weights(a, b)
    assert _forward_logits(a).shape == (1, 5, 128)


def test_from_config_is_a_config_target(llama_dir: Path):
    model = instantiate(
        {
            "_target_": "automodel.core.models.AutoModelForCausalLM.from_config",
            "config": str(llama_dir),
            "torch_dtype": "bfloat16",
            "seed": 5,
        }
    )
    assert model.dtype == torch.bfloat16
    assert _same_weights(
        model, AutoModelForCausalLM.from_config(llama_dir, torch_dtype="bfloat16", seed=5)
    )


# -- errors --------------------------------------------------------------------------------
def test_missing_config_path(tmp_path: Path):
    missing = tmp_path / "nope" / "config.json"
    with pytest.raises(UserError, match="does not exist") as err:
        AutoModelForCausalLM.from_config(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(UserError, match=r"has no config\.json"):
        AutoModelForCausalLM.from_config(tmp_path)


def test_config_that_is_not_a_causal_lm(tmp_path: Path):
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4).save_pretrained(tmp_path)
    for build in (AutoModelForCausalLM.from_config, AutoModelForCausalLM.from_pretrained):
        with pytest.raises(UserError) as err:
            build(tmp_path)
        msg = str(err.value)
        assert "'vit'" in msg
        assert "AutoModelForCausalLM does not support it" in msg


def test_dict_config_errors():
    with pytest.raises(UserError, match="model_type"):
        AutoModelForCausalLM.from_config(dict(TINY_LLAMA))
    with pytest.raises(UserError, match="not-a-model"):
        AutoModelForCausalLM.from_config({"model_type": "not-a-model"})


def test_load_model_config_accepts_a_file_a_dir_and_a_config(llama_dir: Path):
    from_file = load_model_config(llama_dir / "config.json", hidden_act="gelu")
    from_dir = load_model_config(llama_dir)
    assert from_file.hidden_act == "gelu" and from_dir.hidden_act == "silu"
    assert json.loads((llama_dir / "config.json").read_text())["hidden_act"] == "silu"
    gpt2 = GPT2Config(n_layer=2)
    copy = load_model_config(gpt2, n_layer=1)
    assert copy is not gpt2 and copy.n_layer == 1 and gpt2.n_layer == 2


# -- from_pretrained -----------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path: Path, llama_dir: Path) -> tuple[Path, torch.nn.Module]:
    """A tiny Llama saved in bfloat16 with safetensors, and the model that was saved."""
    model = AutoModelForCausalLM.from_config(llama_dir, torch_dtype="bfloat16", seed=11)
    out = tmp_path / "ckpt"
    model.save_pretrained(out)
    return out, model


def test_from_pretrained_loads_the_saved_weights(checkpoint):
    path, saved = checkpoint
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.dtype == torch.bfloat16  # "auto": the dtype in config.json
    assert _same_weights(model, saved)


def test_from_pretrained_dtype_and_attn(checkpoint):
    path, saved = checkpoint
    model = AutoModelForCausalLM.from_pretrained(
        str(path), torch_dtype="float32", attn_implementation="eager"
    )
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.config._attn_implementation == "eager"
    assert torch.equal(model.lm_head.weight, saved.lm_head.weight.float())


def test_from_pretrained_on_meta_reads_no_weights(checkpoint):
    path, _ = checkpoint
    model = AutoModelForCausalLM.from_pretrained(path, init_device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert model.dtype == torch.bfloat16
    assert model.config.name_or_path == str(path)


def test_from_pretrained_missing_path_or_weights(tmp_path: Path, llama_dir: Path):
    with pytest.raises(UserError, match="does not exist"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "missing")
    with pytest.raises(UserError, match="could not load the model weights"):
        AutoModelForCausalLM.from_pretrained(llama_dir)  # a config.json and no weights
    with pytest.raises(UserError, match="valid values"):
        AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype="int4")


# -- tokenizer -----------------------------------------------------------------------------
def test_load_tokenizer_falls_back_to_eos_for_padding(
    tokenizer_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert load_tokenizer(tokenizer_dir).pad_token == "<pad>"
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "no-pad")
    with caplog.at_level(logging.INFO, logger="automodel.core.models"):
        loaded = load_tokenizer(tmp_path / "no-pad")
    assert loaded.pad_token == loaded.eos_token == "</s>"
    assert loaded.pad_token_id == loaded.eos_token_id
    assert "no pad token" in caplog.text
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


def _untied_llama(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    config = LlamaConfig(**{**TINY_LLAMA, "tie_word_embeddings": False})
    return AutoModelForCausalLM.from_config(config, seed=3, torch_dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_repair_embedding_rows_gives_damaged_rows_the_head_direction_at_the_healthy_norm(dtype):
    """Zero, tiny and NaN rows take their LM-head row's direction scaled to the RMS norm of the
    healthy rows; every other weight stays bit for bit."""
    model = _untied_llama(dtype)
    assert model.get_input_embeddings().weight is not model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    with torch.no_grad():
        embed[5] = 0
        embed[9] = 1e-8
        embed[70, 3] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    healthy = [i for i in range(128) if i not in (5, 9, 70)]
    rms = before["model.embed_tokens.weight"][healthy].double().norm(dim=1).square().mean().sqrt()
    done = repair_embedding_rows(model, min_norm=1e-6)
    assert done.row_ids == (5, 9, 70)
    assert done.min_norm_before == 0.0 and done.target_norm == pytest.approx(float(rms))
    head = model.get_output_embeddings().weight.double()
    for i in done.row_ids:
        row = embed[i].double()
        tol = 1e-6 if dtype == torch.float32 else 1e-2
        assert float(row.norm()) == pytest.approx(float(rms), rel=tol)
        expected = head[i] / head[i].norm() * rms
        torch.testing.assert_close(row, expected, rtol=tol, atol=tol)
    after = model.state_dict()
    for name, value in before.items():
        if name != "model.embed_tokens.weight":
            assert torch.equal(after[name], value), name
    embed_name = "model.embed_tokens.weight"
    assert torch.equal(after[embed_name][healthy], before[embed_name][healthy])
    again = repair_embedding_rows(model, min_norm=1e-6)  # nothing left to repair
    assert again.row_ids == () and again.target_norm is None


def test_repair_embedding_rows_refuses_what_it_cannot_do_and_changes_nothing():
    model = _untied_llama()
    embed = model.get_input_embeddings().weight
    with torch.no_grad():
        embed[:4] = 0
    snapshot = embed.clone()
    with pytest.raises(ValueError, match=r"4 input-embedding rows have a norm <= 1e-06, more "):
        repair_embedding_rows(model, max_rows=3)
    with torch.no_grad():
        model.get_output_embeddings().weight[2] = 0
    with pytest.raises(ValueError, match=r"output-embedding rows of tokens \[2\] are damaged too"):
        repair_embedding_rows(model)
    assert torch.equal(embed, snapshot)
    config = LlamaConfig(**{**TINY_LLAMA, "tie_word_embeddings": True})
    tied = AutoModelForCausalLM.from_config(config, seed=3)
    with torch.no_grad():
        tied.get_input_embeddings().weight[7] = 0
    with pytest.raises(ValueError, match=r"tied to the input embedding.* rows \[7\] from"):
        repair_embedding_rows(tied)
    with pytest.raises(ValueError, match="max_rows must be a positive integer, got 0"):
        repair_embedding_rows(model, max_rows=0)
    config = LlamaConfig(**{**TINY_LLAMA, "tie_word_embeddings": False})
    skeleton = AutoModelForCausalLM.from_config(config, init_device="meta")
    with pytest.raises(ValueError, match=r"on the meta device .* once the checkpoint.s weights"):
        repair_embedding_rows(skeleton)
