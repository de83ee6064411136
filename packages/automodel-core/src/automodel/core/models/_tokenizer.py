"""Load a tokenizer through AutoTokenizer, with a pad token guaranteed when possible."""

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
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
            logger.info("tokenizer %s has no pad token; using eos %r", name, tokenizer.eos_token)
        else:
            logger.warning("tokenizer %s has neither a pad token nor an eos token", name)
    return tokenizer
