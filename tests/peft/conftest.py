"""Shared fixtures for the automodel.peft tests: tiny Llama models and helpers shared as fixtures."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from transformers import LlamaForCausalLM

LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_TEMPLATES: dict[tuple, LlamaForCausalLM] = {}


@pytest.fixture(scope="session")
def make_llama(tiny_llama_config) -> Callable[..., LlamaForCausalLM]:
    """``make_llama(hidden_size=32, dtype=float32, **config)``: a fresh tiny Llama in eval mode.

    Every call with the same arguments returns an independent copy with identical weights
    (seeded once, then deep-copied), so a test can wrap one copy with ours and one with peft.
    """

    def make(dtype: torch.dtype = torch.float32, **overrides: object) -> LlamaForCausalLM:
        key = (dtype, tuple(sorted(overrides.items())))
        if key not in _TEMPLATES:
            config = tiny_llama_config(**overrides, attn_implementation="eager")
            with torch.random.fork_rng():
                torch.manual_seed(0)
                _TEMPLATES[key] = LlamaForCausalLM(config).to(dtype).eval()
        return copy.deepcopy(_TEMPLATES[key])

    return make


@pytest.fixture(scope="session")
def input_ids(tiny_llama_config) -> torch.Tensor:
    """A fixed batch of token ids for the tiny Llama (2 sequences of 10 tokens)."""
    vocab = tiny_llama_config().vocab_size
    return torch.randint(0, vocab, (2, 10), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="session")
def peft_name() -> Callable[[str], str]:
    """Map one of our adapter parameter names to the name peft gives it inside a PeftModel."""

    def convert(name: str) -> str:
        if name.endswith(".lora_magnitude_vector"):
            name = name + ".default.weight"
        else:
            for part in (".lora_A.weight", ".lora_B.weight"):
                if name.endswith(part):
                    name = name[: -len(".weight")] + ".default.weight"
        return "base_model.model." + name

    return convert


@pytest.fixture(scope="session")
def randomize_adapters() -> Callable[..., dict[str, torch.Tensor]]:
    """``randomize_adapters(model, seed)``: give every LoRA B (and DoRA magnitude) random values.

    Works on our model (keys ``<path>.lora_B.weight``) and returns the values by our key,
    so the same values can be copied into a peft model with :func:`copy_adapters`.
    """
    from automodel.peft import lora_state_dict

    def randomize(
        model: torch.nn.Module, seed: int = 1, std: float = 0.1
    ) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        values = {}
        with torch.no_grad():
            for name, tensor in lora_state_dict(model).items():
                if name.endswith("lora_B.weight"):
                    new = torch.randn(tensor.shape, generator=gen) * std
                elif name.endswith("lora_magnitude_vector"):
                    new = tensor.float() * (1 + 0.2 * torch.randn(tensor.shape, generator=gen))
                else:
                    continue
                tensor.copy_(new.to(tensor.dtype))
                values[name] = tensor.detach().clone()
        return values

    return randomize


@pytest.fixture(scope="session")
def copy_adapters(peft_name: Callable[[str], str]) -> Callable[..., None]:
    """``copy_adapters(values, peft_model)``: write tensors keyed by our names into a peft model."""

    def copy_into(values: dict[str, torch.Tensor], peft_model: torch.nn.Module) -> None:
        params = dict(peft_model.named_parameters())
        with torch.no_grad():
            for name, value in values.items():
                params[peft_name(name)].copy_(value)

    return copy_into
