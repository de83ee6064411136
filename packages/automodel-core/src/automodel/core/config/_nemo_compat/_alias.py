"""One of their `_target_` paths and how it is spelled here (`Alias`), and the names every
part of the alias table shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NEMO_PREFIX = "nemo_automodel."
TARGET_KEY = "_target_"


@dataclass(frozen=True)
class Alias:
    """How one of their targets is spelled here.

    `ours`: our target (None: the section is plain keys here, its `_target_` is dropped).
    `args`: their argument name -> ours. `dropped`: their arguments we ignore, each with why it
    cannot change results. `refused`: their arguments (with the values we accept anyway, e.g.
    the default) we cannot honour, each with what to use instead. `defaults`: their defaults
    that differ from ours, written out so the meaning stays theirs. `moved`: their arguments
    that are keys of another section here (their name -> where it goes), moved by the
    retrieval pass (`_translate_retrieval`) with their values converted.
    """

    ours: str | None
    args: Mapping[str, str] = field(default_factory=dict)
    dropped: Mapping[str, str] = field(default_factory=dict)
    refused: Mapping[str, tuple[tuple[Any, ...], str]] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    section: Mapping[str, Any] = field(default_factory=dict)  # keys the section gains
    note: str = ""  # a difference to say whenever it is used
    limit: str | None = None  # their argument that keeps the first N samples: a `split` slice
    hf_padding: bool = False  # their tokenizer-style `padding` / `truncation` arguments
    json_unshuffled: bool = False  # their `shuffle_seed` leaves local JSON(L) files in order
    moved: Mapping[str, str] = field(default_factory=dict)
    token_windows: bool = False  # their seq_length counts inputs (windows of seq_length + 1)


# their model loaders' arguments that choose kernels or implementations, not results
MODEL_DROPPED = {
    "use_liger_kernel": "a fused-kernel choice for the same computation",
    "use_sdpa_patching": "an attention-kernel choice for the same computation",
    "backend": "their model-implementation kernel backend (attention/linear kernels)",
    "force_hf": "the Hugging Face implementation is the one used here",
}
