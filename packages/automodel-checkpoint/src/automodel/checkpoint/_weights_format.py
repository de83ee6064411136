"""How the model part of a checkpoint is stored: file names, key names, which tensors.

``HF_WEIGHTS`` (the default) is a full Hugging Face model folder; ``PEFT_ADAPTER`` is the
Hugging Face PEFT adapter file: only the trainable parameters, in ``adapter_model.safetensors``,
under ``base_model.model.<parameter name>``, so that ``PeftModel.from_pretrained(base,
"<checkpoint>/model")`` loads it (``adapter_config.json`` is the caller's, via ``write_extras``).
Either can be split into ``parts``: a model made of several models (a bi-encoder's query and
passage towers) saved as one folder each, inside ``model/``.
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
_PART_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class WeightsFormat:
    """The file stem, key prefix and tensor selection of the weights in ``model/``.

    * ``file_stem``: weights go to ``<stem>.safetensors``, or when sharded to
      ``<stem>-0000i-of-0000N.safetensors`` plus ``<stem>.safetensors.index.json``.
    * ``key_prefix``: prepended to every tensor name on save, stripped on restore (empty, or
      dot-terminated names such as ``"base_model.model."``).
    * ``trainable_only``: only parameters with ``requires_grad=True`` are saved and restored;
      frozen parameters and buffers are neither written nor touched on restore.
    * ``parts``: the model's top-level submodules saved each in its own folder ``model/<part>/``
      under its own names (``query.encoder.x`` -> ``model/query/`` as ``encoder.x``), so that
      each is a model folder of its own; empty: one folder, ``model/``.
    """

    file_stem: str = MODEL_FILE_STEM
    key_prefix: str = ""
    trainable_only: bool = False
    parts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_file_stem(self.file_stem)
        if not isinstance(self.key_prefix, str) or not _PREFIX_RE.match(self.key_prefix):
            raise ValueError(
                "key_prefix must be '' or dot-separated names ending with '.', such as "
                f"'base_model.model.'; got {self.key_prefix!r}"
            )
        if not isinstance(self.trainable_only, bool):
            raise ValueError(f"trainable_only must be True or False, got {self.trainable_only!r}")
        parts = self.parts
        if (
            not isinstance(parts, tuple)
            or not all(isinstance(p, str) and _PART_RE.match(p) for p in parts)
            or len(set(parts)) != len(parts)
        ):
            raise ValueError(
                "parts must be a tuple of distinct folder names (letters, digits, _ and -), "
                f"such as ('query', 'passage'); got {parts!r}"
            )

    @property
    def folders(self) -> tuple[str, ...]:
        """The folders under ``model/`` that hold weights: each part, or ``""`` (model/ itself)."""
        return self.parts or ("",)

    def split(self, state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """``state`` (the model's names) as {folder: {saved name: tensor}}: cut into parts, each
        name given the key prefix; ValueError for a name in no part."""
        out: dict[str, dict[str, Any]] = {folder: {} for folder in self.folders}
        outside = []
        for name, tensor in state.items():
            part, _, rest = name.partition(".") if self.parts else ("", "", name)
            if part not in out or not rest:
                outside.append(name)
            else:
                out[part][self.key_prefix + rest] = tensor
        if outside:
            raise ValueError(
                f"{len(outside)} model tensor(s) belong to none of the parts {list(self.parts)}: "
                f"{outside[:5]}"
            )
        return out

    def model_name(self, folder: str, saved_name: str) -> str:
        """The model's name of a tensor saved as ``saved_name`` (key prefix stripped) in
        ``folder``: the inverse of :meth:`split`."""
        return f"{folder}.{saved_name}" if folder else saved_name

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
        if self.parts:
            details.append("one folder per part: " + ", ".join(f"{p}/" for p in self.parts))
        return f"{kind} ({', '.join(details)})"

    def to_json(self) -> dict[str, Any]:
        """The JSON object recorded in ``checkpoint.json``."""
        out = asdict(self)
        if not self.parts:
            del out["parts"]  # as checkpoints written before parts existed
        return out

    @classmethod
    def from_json(cls, raw: Any) -> WeightsFormat:
        """Parse :meth:`to_json`'s object (missing fields take their defaults); ValueError."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"expected a JSON object, got {raw!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}")
        raw = dict(raw)
        if isinstance(raw.get("parts"), list):  # JSON has no tuples
            raw["parts"] = tuple(raw["parts"])
        return cls(**raw)


HF_WEIGHTS = WeightsFormat()
PEFT_ADAPTER = WeightsFormat(
    file_stem="adapter_model", key_prefix="base_model.model.", trainable_only=True
)
_PRESETS: dict[WeightsFormat, tuple[str, str]] = {
    HF_WEIGHTS: ("HF_WEIGHTS", "full model weights"),
    PEFT_ADAPTER: ("PEFT_ADAPTER", "a PEFT adapter"),
}
