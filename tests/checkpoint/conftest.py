"""Shared fixtures for the Checkpointer tests: a tiny Llama training setup built from a config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 128


def tiny_llama(
    seed: int,
    *,
    tie: bool = True,
    layers: int = 2,
    intermediate: int = 64,
    dtype: torch.dtype = torch.float32,
):
    """A Llama with random weights (vocab 128, hidden 32), no download."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
    )
    # from_config(dtype=...) builds the way from_pretrained does: non-persistent buffers such as
    # the rotary inv_freq stay float32 (a later .to(bf16) would round them and change logits).
    return transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)


class Progress:
    """A custom stateful object, like a step scheduler: counts steps and tokens."""

    def __init__(self) -> None:
        self.steps = 0
        self.tokens = 0
        self.history: list[float] = []

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "tokens": self.tokens, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.tokens, self.history = state["steps"], state["tokens"], state["history"]


class TorchRNG:
    """The global torch RNG as a stateful object."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"torch": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["torch"])


class Run:
    """Model + AdamW + LR scheduler + custom stateful + RNG: one training setup."""

    def __init__(self, seed: int, **model_kwargs: Any) -> None:
        self.model = tiny_llama(seed, **model_kwargs)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2, weight_decay=0.1)
        self.scheduler = torch.optim.lr_scheduler.LinearLR(self.optimizer, 1.0, 0.1, 10)
        self.progress = Progress()
        self.rng = TorchRNG()

    def step(self) -> float:
        """One optimizer step on a random batch drawn from the global RNG."""
        ids = torch.randint(0, VOCAB, (2, 8))
        loss = self.model(input_ids=ids, labels=ids).loss
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.steps += 1
        self.progress.tokens += ids.numel()
        self.progress.history.append(loss.item())
        return loss.item()

    def states(self) -> dict[str, Any]:
        """Keyword arguments for Checkpointer.save / restore."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "optim_states": {"lr_scheduler": self.scheduler},
            "train_states": {"progress": self.progress, "rng": self.rng},
        }

    def snapshot(self) -> dict[str, Any]:
        """Deep copies of everything a checkpoint should hold."""
        opt = self.optimizer.state_dict()
        return {
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optim": {(i, k): v.clone() for i, s in opt["state"].items() for k, v in s.items()},
            "param_groups": [{k: v for k, v in g.items()} for g in opt["param_groups"]],
            "scheduler": self.scheduler.state_dict(),
            "progress": self.progress.state_dict(),
        }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Bitwise equality of two snapshots."""
    for part in ("model", "optim"):
        assert a[part].keys() == b[part].keys(), part
        for key, tensor in a[part].items():
            assert b[part][key].dtype == tensor.dtype, (part, key)
            assert torch.equal(b[part][key], tensor), (part, key)
    assert a["param_groups"] == b["param_groups"]
    assert a["scheduler"] == b["scheduler"]
    assert a["progress"] == b["progress"]


@pytest.fixture
def make_run() -> Callable[..., Run]:
    """Build a Run: ``make_run(seed, tie=True, layers=2, intermediate=64)``."""
    return Run


@pytest.fixture(name="tiny_llama")
def tiny_llama_fixture() -> Callable[..., torch.nn.Module]:
    """The tiny Llama builder, for test modules (conftest cannot be imported)."""
    return tiny_llama


@pytest.fixture(name="assert_same")
def assert_same_fixture() -> Callable[[dict[str, Any], dict[str, Any]], None]:
    """The snapshot comparison, for test modules (conftest cannot be imported)."""
    return assert_same
