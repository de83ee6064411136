"""How the model part of a checkpoint is stored: file names, key names, which tensors.

``HF_WEIGHTS`` (the default) is a full Hugging Face model folder; ``PEFT_ADAPTER`` is the
Hugging Face PEFT adapter file: only the trainable parameters, in ``adapter_model.safetensors``,
under ``base_model.model.<parameter name>``, so that ``PeftModel.from_pretrained(base,
"<checkpoint>/model")`` loads it (``adapter_config.json`` is the caller's, via ``write_extras``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ._layout import (
    MODEL_FILE_STEM,
    check_file_stem,
    is_weight_file_name,
    weights_file_name,
    weights_index_name,
)

_PREFIX_RE = re.compile(r"^(?:[^.\s]+\.)*$")


@dataclass(frozen=True)
class WeightsFormat:
    """The file stem, key prefix and tensor selection of the weights in ``model/``.

    * ``file_stem``: weights go to ``<stem>.safetensors``, or when sharded to
      ``<stem>-0000i-of-0000N.safetensors`` plus ``<stem>.safetensors.index.json``.
    * ``key_prefix``: prepended to every tensor name on save, stripped on restore (empty, or
      dot-terminated names such as ``"base_model.model."``).
    * ``trainable_only``: only parameters with ``requires_grad=True`` are saved and restored;
      frozen parameters and buffers are neither written nor touched on restore.
    """

    file_stem: str = MODEL_FILE_STEM
    key_prefix: str = ""
    trainable_only: bool = False

    def __post_init__(self) -> None:
        check_file_stem(self.file_stem)
        if not isinstance(self.key_prefix, str) or not _PREFIX_RE.match(self.key_prefix):
            raise ValueError(
                "key_prefix must be '' or dot-separated names ending with '.', such as "
                f"'base_model.model.'; got {self.key_prefix!r}"
            )
        if not isinstance(self.trainable_only, bool):
            raise ValueError(f"trainable_only must be True or False, got {self.trainable_only!r}")

    @property
    def file_name(self) -> str:
        """The single weight file, ``<stem>.safetensors``."""
        return weights_file_name(self.file_stem)

    @property
    def index_name(self) -> str:
        """The index of sharded weights, ``<stem>.safetensors.index.json``."""
        return weights_index_name(self.file_stem)

    def is_weight_file(self, name: str) -> bool:
        """Whether the file ``name`` is one of this format's weight files or its index."""
        return is_weight_file_name(name, self.file_stem)

    @property
    def name(self) -> str:
        """``HF_WEIGHTS`` / ``PEFT_ADAPTER`` for the presets, else the repr."""
        preset = _PRESETS.get(self)
        return preset[0] if preset else repr(self)

    def describe(self) -> str:
        """Human description, e.g. "full model weights (model.safetensors)"."""
        preset = _PRESETS.get(self)
        kind = preset[1] if preset else "model weights"
        details = [self.file_name]
        if self.trainable_only:
            details.append("trainable parameters only")
        if self.key_prefix:
            details.append(f"keys prefixed {self.key_prefix!r}")
        return f"{kind} ({', '.join(details)})"

    def to_json(self) -> dict[str, Any]:
        """The JSON object recorded in ``checkpoint.json``."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> WeightsFormat:
        """Parse :meth:`to_json`'s object (missing fields take their defaults); ValueError."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"expected a JSON object, got {raw!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}")
        return cls(**dict(raw))


HF_WEIGHTS = WeightsFormat()
PEFT_ADAPTER = WeightsFormat(
    file_stem="adapter_model", key_prefix="base_model.model.", trainable_only=True
)
_PRESETS: dict[WeightsFormat, tuple[str, str]] = {
    HF_WEIGHTS: ("HF_WEIGHTS", "full model weights"),
    PEFT_ADAPTER: ("PEFT_ADAPTER", "a PEFT adapter"),
}
