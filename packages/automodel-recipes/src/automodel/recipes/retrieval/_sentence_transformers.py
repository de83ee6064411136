"""The files that make a saved embedding model a sentence-transformers model too.

Written beside the Hugging Face model files (config.json, weights, tokenizer) in the format that
`sentence_transformers.SentenceTransformer(path)` reads in every release since 2.x: the
transformer module at the folder's root, then pooling and (optionally) normalisation modules,
with the query and passage prefixes as its prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The files of a sentence-transformers folder, read back by `_embedding_model`.
MODULES_FILE = "modules.json"
SETTINGS_FILE = "sentence_bert_config.json"
PROMPTS_FILE = "config_sentence_transformers.json"
# Our pooling modes -> sentence-transformers' pooling flags; the others it has, which we lack.
POOLING_FLAGS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}  # fmt: skip
OTHER_POOLING_FLAGS = (
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
)


class SentenceTransformerFiles:
    """`save_pretrained(folder)` writes modules.json, sentence_bert_config.json,
    config_sentence_transformers.json, 1_Pooling/ and 2_Normalize/ for an embedding model of
    `dimension` with this pooling; it goes where a tokenizer goes (checkpoint extras, merged
    model)."""

    def __init__(
        self,
        dimension: int,
        pooling: str,
        normalize: bool,
        max_seq_length: int,
        query_prefix: str = "",
        passage_prefix: str = "",
    ):
        self.dimension, self.pooling, self.normalize = dimension, pooling, normalize
        self.max_seq_length = max_seq_length
        self.prompts = {"query": query_prefix, "document": passage_prefix}

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the sentence-transformers files into `folder` (the HF model's own folder)."""
        folder = Path(folder)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]  # fmt: skip
        if self.normalize:
            modules.append(
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
            )  # fmt: skip
            (folder / "2_Normalize").mkdir(parents=True, exist_ok=True)
        pooling: dict[str, Any] = {"word_embedding_dimension": self.dimension}
        pooling |= {flag: mode == self.pooling for mode, flag in POOLING_FLAGS.items()}
        pooling |= dict.fromkeys(OTHER_POOLING_FLAGS, False)
        pooling["include_prompt"] = True  # the prefixes are part of what is pooled, as in training
        _write(folder / MODULES_FILE, modules)
        _write(folder / "1_Pooling" / "config.json", pooling)
        _write(folder / SETTINGS_FILE, {"max_seq_length": self.max_seq_length, "do_lower_case": False})  # fmt: skip
        _write(
            folder / PROMPTS_FILE,
            {
                "prompts": {name: text for name, text in self.prompts.items() if text},
                "default_prompt_name": None,
                "similarity_fn_name": "cosine" if self.normalize else "dot",
            },
        )


def _write(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")
