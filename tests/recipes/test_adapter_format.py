"""The PEFT adapter folder has one format and one writer of its config: a checkpoint of a LoRA
run holds, file for file and tensor for tensor, what automodel.peft.save_adapter writes."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from automodel.checkpoint import MODEL_DIR, PEFT_ADAPTER, Checkpointer
from automodel.core.config import ConfigNode
from automodel.peft import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_KEY_PREFIX,
    ADAPTER_WEIGHTS_NAME,
    LoraConfig,
    apply_lora,
    save_adapter,
)
from automodel.recipes import adapter_extras_writer

BASE = "examples/llm_finetune/assets/tiny_llama"


def test_the_checkpoint_preset_states_peft_s_names() -> None:
    assert PEFT_ADAPTER.file_name == ADAPTER_WEIGHTS_NAME
    assert PEFT_ADAPTER.key_prefix == ADAPTER_KEY_PREFIX
    assert PEFT_ADAPTER.trainable_only


def test_a_checkpoint_adapter_folder_is_what_save_adapter_writes(tmp_path, tiny_llama_config):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config())
    apply_lora(model, LoraConfig(match_all_linear=True, dim=4, alpha=8))
    with torch.no_grad():  # trained-looking adapters: lora_B starts at zero
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))
    ours = save_adapter(model, tmp_path / "peft", base_model_name_or_path=BASE)
    checkpointer = Checkpointer(tmp_path / "checkpoints", weights_format=PEFT_ADAPTER)
    cfg = ConfigNode({"model": {"config": BASE}})
    saved = checkpointer.save(0, 1, model=model, write_extras=adapter_extras_writer(model, cfg))
    checkpointer.close()
    theirs = saved / MODEL_DIR
    assert sorted(p.name for p in theirs.iterdir()) == sorted(p.name for p in ours.iterdir())
    config = json.loads((theirs / ADAPTER_CONFIG_NAME).read_text())
    assert config == json.loads((ours / ADAPTER_CONFIG_NAME).read_text())
    a, b = load_file(theirs / ADAPTER_WEIGHTS_NAME), load_file(ours / ADAPTER_WEIGHTS_NAME)
    assert a.keys() == b.keys() and all(k.startswith(ADAPTER_KEY_PREFIX) for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
