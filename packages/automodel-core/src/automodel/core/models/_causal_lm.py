"""AutoModelForCausalLM: build any Hugging Face causal LM from a checkpoint or from a config."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel

from ..config import UserError
from ._config import check_causal_lm, load_model_config, looks_like_local_path
from ._dtype import resolve_dtype

logger = logging.getLogger(__name__)

Device = str | torch.device


class AutoModelForCausalLM:
    """Config targets over `transformers.AutoModelForCausalLM` for any causal LM architecture."""

    def __init__(self) -> None:
        raise TypeError("use AutoModelForCausalLM.from_pretrained(...) or .from_config(...)")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        torch_dtype: str | torch.dtype = "auto",
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        init_device: Device | None = None,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """Load a pretrained causal LM; `init_device="meta"` builds its skeleton without weights."""
        dtype = resolve_dtype(torch_dtype)
        name = os.path.expanduser(os.fspath(pretrained_model_name_or_path))
        if looks_like_local_path(name) and not os.path.exists(name):
            raise UserError(f"model not found: '{name}' does not exist")
        config = load_model_config(name, trust_remote_code=trust_remote_code, revision=revision)
        check_causal_lm(config)
        if init_device is not None and torch.device(init_device).type == "meta":
            # Weights are loaded after sharding (e.g. by the checkpoint package), not here.
            if dtype == "auto":
                dtype = _config_dtype(config)
            logger.info("building %s on the meta device; its weights are not loaded", name)
            model = cls.from_config(
                config,
                torch_dtype=dtype,
                attn_implementation=attn_implementation,
                trust_remote_code=trust_remote_code,
                init_device="meta",
            )
            model.config.name_or_path = name
            return model
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                name, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision, **kwargs
            )
        except OSError as e:
            raise UserError(f"could not load the model weights from '{name}': {e}") from e
        if init_device is not None:
            model.to(torch.device(init_device))
        logger.info("loaded %s (%s, %s)", name, type(model).__name__, model.dtype)
        return model

    @classmethod
    def from_config(
        cls,
        config: str | os.PathLike[str] | Mapping[str, Any] | PretrainedConfig,
        *,
        torch_dtype: str | torch.dtype = "float32",
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        seed: int | None = None,
        init_device: Device | None = None,
        **config_overrides: Any,
    ) -> PreTrainedModel:
        """A randomly initialised causal LM for a config (path, dict or PretrainedConfig).

        The same `seed` gives bitwise-identical weights without touching the global RNG;
        `init_device="meta"` allocates no memory (for sharding before materialising).
        """
        dtype = resolve_dtype(torch_dtype)
        model_config = load_model_config(
            config, trust_remote_code=trust_remote_code, **config_overrides
        )
        check_causal_lm(model_config)
        if dtype == "auto":
            dtype = _config_dtype(model_config)
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        device = torch.device(init_device) if init_device is not None else None
        with _seeded(seed, device), device if device is not None else contextlib.nullcontext():
            model = transformers.AutoModelForCausalLM.from_config(model_config, **kwargs)
        logger.info(
            "built %s from config (%s, %s%s)",
            type(model).__name__,
            dtype,
            device if device is not None else "default device",
            f", seed {seed}" if seed is not None else "",
        )
        return model


def _config_dtype(config: PretrainedConfig) -> torch.dtype:
    value = getattr(config, "dtype", None)
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype) and value.is_floating_point:
        return value  # a checkpoint's own dtype (e.g. float64) is kept, not limited to the names
    resolved = resolve_dtype(value)
    return torch.float32 if resolved == "auto" else resolved  # type: ignore[return-value]


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device | None) -> Iterator[None]:
    """Seed torch for the block and restore the previous RNG state afterwards."""
    if seed is None:
        yield
        return
    cuda = device is not None and device.type == "cuda"
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
