"""Build any Hugging Face model of a task (causal LM, image-text-to-text, embedding backbone,
sequence classification) from a checkpoint or a config: one set of builders over transformers'
auto class of each task."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel

from ..config import UserError
from ._config import check_auto_class, load_model_config, looks_like_local_path
from ._dtype import resolve_dtype

logger = logging.getLogger(__name__)

Device = str | torch.device


class HFAutoModel:
    """Config targets over one of transformers' auto classes (`auto_class`), for any architecture
    it knows: `from_pretrained` and `from_config`."""

    auto_class: ClassVar[str]  # the name of transformers' auto class
    kind: ClassVar[str]  # what such a model is, for errors

    def __init__(self) -> None:
        name = type(self).__name__
        raise TypeError(f"use {name}.from_pretrained(...) or .from_config(...)")

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
        dequantize: bool = False,
        submodel: str | None = None,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """Load a pretrained model; `init_device="meta"` builds its skeleton without weights.

        `dequantize`: a checkpoint saved quantized (its config has a `quantization_config`, e.g.
        fine-grained FP8 or MXFP4) loads with its weights dequantized to `torch_dtype`, to train
        as any other; a checkpoint that is not quantized loads as it is. `submodel`: the part
        of the loaded model to return (a dotted attribute path, e.g. a VLM's `language_model`
        to train as a text embedder), a transformers model with its own config; the rest is
        dropped.
        """
        if submodel is not None:
            model = cls.from_pretrained(
                pretrained_model_name_or_path, torch_dtype=torch_dtype,
                attn_implementation=attn_implementation, trust_remote_code=trust_remote_code,
                revision=revision, init_device=init_device, dequantize=dequantize, **kwargs,
            )  # fmt: skip
            return part_of(model, submodel)
        dtype = resolve_dtype(torch_dtype)
        name = os.path.expanduser(os.fspath(pretrained_model_name_or_path))
        if looks_like_local_path(name) and not os.path.exists(name):
            raise UserError(f"model not found: '{name}' does not exist")
        config = load_model_config(name, trust_remote_code=trust_remote_code, revision=revision)
        check_auto_class(config, cls.auto_class, cls.kind)
        quantization = dequantizing_config(config) if dequantize else None
        if quantization is not None:
            kwargs["quantization_config"] = quantization
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
            model = getattr(transformers, cls.auto_class).from_pretrained(
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
        """A randomly initialised model for a config (path, dict or PretrainedConfig).

        The same `seed` gives bitwise-identical weights without touching the global RNG;
        `init_device="meta"` allocates no memory (for sharding before materialising).
        """
        dtype = resolve_dtype(torch_dtype)
        model_config = load_model_config(
            config, trust_remote_code=trust_remote_code, **config_overrides
        )
        check_auto_class(model_config, cls.auto_class, cls.kind)
        if dtype == "auto":
            dtype = _config_dtype(model_config)
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        device = torch.device(init_device) if init_device is not None else None
        with _seeded(seed, device), device if device is not None else contextlib.nullcontext():
            model = getattr(transformers, cls.auto_class).from_config(model_config, **kwargs)
        logger.info(
            "built %s from config (%s, %s%s)",
            type(model).__name__,
            dtype,
            device if device is not None else "default device",
            f", seed {seed}" if seed is not None else "",
        )
        return model


def part_of(model: PreTrainedModel, path: str) -> PreTrainedModel:
    """`model`'s submodule at the dotted attribute `path`, which must be a transformers model
    (its own config, `save_pretrained`); a UserError naming the candidates otherwise."""
    part: Any = model
    for name in path.split("."):
        part = getattr(part, name, None)
    if not isinstance(part, PreTrainedModel):
        candidates = sorted(
            name for name, module in model.named_modules()
            if name and isinstance(module, PreTrainedModel)
        )  # fmt: skip
        found = "no such part" if part is None else f"a {type(part).__name__}"
        raise UserError(
            f"submodel {path!r} of {type(model).__name__}: {found}, not a transformers model; "
            f"its transformers submodels: {', '.join(candidates) or 'none'}"
        )
    logger.info("using %s's %s (%s) alone", type(model).__name__, path, type(part).__name__)
    return part


class AutoModelForCausalLM(HFAutoModel):
    """Any Hugging Face causal LM (`transformers.AutoModelForCausalLM`)."""

    auto_class = "AutoModelForCausalLM"
    kind = "causal language model"


class AutoModelForImageTextToText(HFAutoModel):
    """Any Hugging Face vision-language model that writes text about images and text
    (`transformers.AutoModelForImageTextToText`: LLaVA, Qwen2-VL, SmolVLM, Gemma 3, ...)."""

    auto_class = "AutoModelForImageTextToText"
    kind = "image-text-to-text model"


class AutoModel(HFAutoModel):
    """Any Hugging Face backbone without a task head (`transformers.AutoModel`: BERT, ModernBERT,
    Llama, Qwen, ...): hidden states for embedding models."""

    auto_class = "AutoModel"
    kind = "base model (hidden states)"


class AutoModelForSequenceClassification(HFAutoModel):
    """Any Hugging Face model with a sequence-classification head
    (`transformers.AutoModelForSequenceClassification`), e.g. a reranker with `num_labels=1`."""

    auto_class = "AutoModelForSequenceClassification"
    kind = "sequence-classification model"


def dequantizing_config(config: PretrainedConfig) -> Any:
    """The checkpoint's own quantization config set to dequantize while loading (None when the
    checkpoint is not quantized); a UserError for a method transformers cannot dequantize."""
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        return None
    from transformers.quantizers.auto import AutoQuantizationConfig

    quant = AutoQuantizationConfig.from_dict(
        dict(quant) if isinstance(quant, Mapping) else quant.to_dict()
    )
    if not hasattr(quant, "dequantize"):
        method = getattr(quant, "quant_method", type(quant).__name__)
        method = getattr(method, "value", method)  # transformers' QuantizationMethod enum
        raise UserError(
            f"dequantize: the checkpoint is quantized with {method}, which transformers cannot "
            "dequantize while loading; load a checkpoint saved in bfloat16 instead"
        )
    quant.dequantize = True
    return quant


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
