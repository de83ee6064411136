"""Load a tokenizer (AutoTokenizer) or a processor (AutoProcessor), with a pad token when possible."""

from __future__ import annotations

import logging
import os
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..config import UserError
from ._config import looks_like_local_path

logger = logging.getLogger(__name__)


def load_tokenizer(path_or_name: str | os.PathLike[str], **kwargs: Any) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained`, using the EOS token for padding when none is defined."""
    name = os.path.expanduser(os.fspath(path_or_name))
    if looks_like_local_path(name) and not os.path.exists(name):
        raise UserError(f"tokenizer not found: '{name}' does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except OSError as e:
        raise UserError(f"could not load a tokenizer from '{name}': {e}") from e
    _ensure_pad_token(tokenizer, name)
    return tokenizer


def load_processor(path_or_name: str | os.PathLike[str], **kwargs: Any) -> Any:
    """`AutoProcessor.from_pretrained` (a VLM's image processor, tokenizer and chat template),
    its tokenizer padding with the EOS token when it defines no pad token."""
    from transformers import AutoProcessor  # image and video processing: only for VLMs

    name = os.path.expanduser(os.fspath(path_or_name))
    if looks_like_local_path(name) and not os.path.exists(name):
        raise UserError(f"processor not found: '{name}' does not exist")
    try:
        processor = AutoProcessor.from_pretrained(name, **kwargs)
    except ImportError as e:  # e.g. Qwen2-VL's video processor needs torchvision
        message = " ".join(str(e).split())
        raise UserError(
            f"could not load the processor of '{name}': {message} Install the missing "
            "library (for torchvision, the build that matches your torch)."
        ) from e
    except (OSError, ValueError) as e:
        raise UserError(f"could not load a processor from '{name}': {e}") from e
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise UserError(
            f"'{name}' holds no processor with a tokenizer ({type(processor).__name__}); a VLM's "
            "processor combines an image processor and a tokenizer"
        )
    _ensure_pad_token(tokenizer, name)
    return processor


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
            logger.info("tokenizer %s has no pad token; using eos %r", name, tokenizer.eos_token)
        else:
            logger.warning("tokenizer %s has neither a pad token nor an eos token", name)
