"""The files that make a saved embedding model a sentence-transformers model too.

Written beside the Hugging Face model files (config.json, weights, tokenizer) in the format that
`sentence_transformers.SentenceTransformer(path)` reads: the transformer module at the folder's
root, then pooling and (optionally) normalisation modules, with the query and passage prefixes
as its prompts (every release since 2.x). Separate query and passage towers are a `Router`
(releases since 5.0): each tower in its own folder, routed by task, then the same pooling and
normalisation; `encode_query` and `encode_document` pick the tower.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The files of a sentence-transformers folder, read back by `_embedding_model`.
MODULES_FILE = "modules.json"
SETTINGS_FILE = "sentence_bert_config.json"
PROMPTS_FILE = "config_sentence_transformers.json"
ROUTER_FILE = "router_config.json"
TRANSFORMER = "sentence_transformers.models.Transformer"
POOLING = "sentence_transformers.models.Pooling"
NORMALIZE = "sentence_transformers.models.Normalize"
ROUTER = "sentence_transformers.models.Router"
ROUTES = ("query", "document")  # sentence-transformers' task names, in the towers' order
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
    model). With `towers` (the query and the passage tower's folders), router_config.json too,
    and each tower's sentence_bert_config.json in its folder."""

    def __init__(
        self,
        dimension: int,
        pooling: str,
        normalize: bool,
        max_seq_length: int,
        query_prefix: str = "",
        passage_prefix: str = "",
        towers: tuple[str, str] | None = None,
    ):
        self.dimension, self.pooling, self.normalize = dimension, pooling, normalize
        self.towers = towers
        self.max_seq_length = max_seq_length
        self.prompts = {"query": query_prefix, "document": passage_prefix}

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the sentence-transformers files into `folder` (the HF model's own folder)."""
        folder = Path(folder)
        after = {"1_Pooling": POOLING} | ({"2_Normalize": NORMALIZE} if self.normalize else {})
        if self.towers is None:
            chain = [("", TRANSFORMER), *after.items()]
            modules = [
                {"idx": i, "name": str(i), "path": path, "type": kind}
                for i, (path, kind) in enumerate(chain)
            ]
            towers: tuple[str, ...] = ("",)
        else:
            modules = [{"idx": 0, "name": "0", "path": "", "type": ROUTER}]
            towers = self.towers
            router = {
                "types": dict.fromkeys(towers, TRANSFORMER) | after,
                "structure": {
                    route: [tower, *after] for route, tower in zip(ROUTES, towers, strict=True)
                },
                "parameters": {"default_route": "document", "allow_empty_key": True},
            }
            _write(folder / ROUTER_FILE, router)
        if self.normalize:
            (folder / "2_Normalize").mkdir(parents=True, exist_ok=True)
        pooling: dict[str, Any] = {"word_embedding_dimension": self.dimension}
        pooling |= {flag: mode == self.pooling for mode, flag in POOLING_FLAGS.items()}
        pooling |= dict.fromkeys(OTHER_POOLING_FLAGS, False)
        pooling["include_prompt"] = True  # the prefixes are part of what is pooled, as in training
        _write(folder / MODULES_FILE, modules)
        _write(folder / "1_Pooling" / "config.json", pooling)
        for tower in towers:
            _write(folder / tower / SETTINGS_FILE, {"max_seq_length": self.max_seq_length, "do_lower_case": False})  # fmt: skip
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
