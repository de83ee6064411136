"""Seeding and capturing the random number generators of python, numpy and torch."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed python's `random`, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    """The state of every global RNG as tensors and plain values, loadable with `weights_only=True`.

    Keys: `python`, `torch`, `numpy` and, when CUDA is available,
    `cuda` (the current device's generator; in a multi-GPU run each rank saves its own).
    """
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "torch": torch.get_rng_state(),
    }
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state["numpy"] = {
        "kind": str(kind),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by `rng_state()` (each one present here and in `state`)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        saved = state["numpy"]
        keys = saved["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"])
        )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class GlobalRngState:
    """The process's global RNGs as a stateful object, so checkpointers can save and restore them."""

    def state_dict(self) -> dict[str, Any]:
        """Same as `rng_state()`."""
        return rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Same as `set_rng_state(state)`."""
        set_rng_state(state)
