"""The translator's retrieval data passes: their `RetrievalDatasetConfig` as
`retrieval_dataset`'s arguments, and their mining config's keys (`MineHardNegativesRecipe`)
as our `mining:` section. `put` (a value moved into one of our sections) is shared with the
model passes of `_translate_retrieval`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._aliases import INLINE_DATASETS, RETRIEVAL_DATASETS, TARGET_KEY
from ._keys import MINING_DROPS, MINING_KEYS, MINING_RENAMES
from ._translator_base import _TranslatorBase

_MARGIN_TYPES = {"perc": "relative", "abs": "absolute"}
_EVAL_SET = (
    "validation_dataset: {_target_: automodel.core.data.retrieval_eval_set, path: <rows of "
    "query and pos_ids>, corpus: <rows of id and text>} (docs/retrieval_recipe.md)"
)


def _group(entry: Any) -> int:
    """Where their `make_retrieval_dataset` puts a source: Hub, corpus-id JSON, inline rows."""
    path = str(entry.get("path") if isinstance(entry, dict) else entry)
    if path.startswith("hf://"):
        return 0
    return 2 if Path(path).suffix.lower() in (".jsonl", ".tsv", ".csv") else 1


class _RetrievalDataPasses(_TranslatorBase):
    instruction_loaders: set[str]  # loaders whose bi-encoder collator joins the instructions

    # -- the datasets --------------------------------------------------------------------------
    def retrieval_data(self, name: str, kind: str | None) -> None:
        """`RetrievalDatasetConfig` of one local inline JSONL file is `retrieval_dataset`."""
        node = self.data.get(name)
        target = node.get(TARGET_KEY) if isinstance(node, dict) else None
        if target not in (*RETRIEVAL_DATASETS, *INLINE_DATASETS):
            return
        assert isinstance(node, dict)
        data_type = node.pop("data_type", "train")
        model_type = node.pop("model_type", "bi_encoder")
        if name == "validation_dataset":
            self.fail(
                f"{name}._target_",
                "their validation set (data_type: eval) scores each query against its own "
                "n_passages passages (accuracy@1, MRR); here validation searches a held-out "
                f"corpus (recall@k, MRR@10, nDCG@10): write {_EVAL_SET}, or remove "
                "validation_dataset",
            )
            return
        if data_type != "train":
            self.fail(
                f"{name}.data_type",
                f"data_type: {data_type}: the training dataset is data_type: train (a "
                f"validation set here is {_EVAL_SET})",
            )
        expected = {"bi": "bi_encoder", "cross": "cross_encoder"}.get(kind or "")
        if expected and model_type != expected:
            self.fail(
                f"{name}.model_type",
                f"model_type: {model_type} in a {expected} config; the recipe decides here "
                f"(set {expected} or drop it)",
            )
        self.changed[name] = "data_type and model_type: the recipe decides"
        path = self.source(name, node, inline_only=target in INLINE_DATASETS)
        if path is None:
            return
        node["data_dir_list"] = path  # the target pass renames it to path
        given = "n_passages" in node
        passages = node.pop("n_passages", 5)
        if isinstance(passages, bool) or not isinstance(passages, int) or passages < 1:
            self.fail(f"{name}.n_passages", f"n_passages must be an integer >= 1, got {passages!r}")  # fmt: skip
            return
        node["num_negatives"] = passages - 1
        how = f"n_passages: {passages} = the positive + num_negatives"
        if given:
            self.move(f"{name}.n_passages", f"{name}.num_negatives", how)
        else:
            self.changed[f"{name}.num_negatives"] = f"NeMo AutoModel's default {how}"
        node["sample_negatives"] = False
        self.changed[f"{name}.sample_negatives"] = (
            "their rows give their first n_passages - 1 negatives in order (cycled when fewer)"
        )
        self.instructions(name, node, kind)
        limit = node.pop("max_train_samples", None)
        offset = node.pop("train_data_select_offset", 0) or 0
        shuffle = node.pop("do_shuffle", False)
        if shuffle and (limit is not None or target in INLINE_DATASETS):
            node["shuffle_seed"] = node.get("seed", 42)
            self.changed[f"{name}.shuffle_seed"] = "do_shuffle: rows shuffled with the seed"
        elif shuffle:
            self.note(name, "do_shuffle dropped: they shuffle rows only with max_train_samples")
        if limit is not None:
            node["split"] = f"train[{int(offset)}:{int(offset) + int(limit)}]"
            self.changed[f"{name}.split"] = (
                f"max_train_samples: {limit} from train_data_select_offset: {offset}"
            )

    def instructions(self, name: str, node: dict[str, Any], kind: str | None) -> None:
        """`use_dataset_instruction`: their metadata's instructions, which their bi-encoder
        collator joins to the texts only when its own `use_dataset_instruction` is set too."""
        if not node.pop("use_dataset_instruction", False):
            return
        if kind == "bi" and "dataloader" in self.instruction_loaders:
            node["instructions"] = True
            self.move(f"{name}.use_dataset_instruction", f"{name}.instructions")
        else:
            why = "their cross-encoder" if kind == "cross" else "their collator (without use_dataset_instruction)"  # fmt: skip
            self.note(name, f"use_dataset_instruction dropped: {why} does not read the instructions")  # fmt: skip

    def source(self, name: str, node: dict[str, Any], inline_only: bool) -> Any:
        """`data_dir_list` in the order their loader concatenates it (Hub sources, then their
        corpus-id JSON, then inline JSONL); a problem for a file it cannot read."""
        key = f"{name}.data_dir_list"
        sources = node.get("data_dir_list")
        if sources is None:
            self.fail(key, "data_dir_list is required: the training rows")
            return None
        entries = list(sources) if isinstance(sources, list) else [sources]
        if not entries:
            self.fail(key, "data_dir_list is empty: give the training rows")
            return None
        readable = True
        for entry in entries:
            path = str(entry.get("path") if isinstance(entry, dict) else entry)
            suffix = Path(path).suffix.lower()
            if inline_only and (isinstance(entry, dict) or path.startswith("hf://")):
                self.fail(key, f"{entry!r}: their inline loader reads .json or .jsonl paths")
            elif not (inline_only or path.startswith("hf://") or suffix in (".json", ".jsonl")):
                self.fail(
                    key,
                    f"'{path}': their loader reads a .jsonl file as inline rows, another file "
                    "as their corpus-id JSON and hf:// as their Hub layout; give one of those",
                )
            else:
                continue
            readable = False
        if not readable:
            return None
        sampled = any(isinstance(e, dict) and e.get("num_samples") is not None for e in entries)
        if sampled and "seed" not in node:
            node["seed"] = 42
            self.changed[f"{name}.seed"] = "NeMo AutoModel's default (42) draws num_samples"
        if not inline_only:
            ordered = sorted(entries, key=_group)
            if ordered != entries:
                self.note(
                    key,
                    "reordered as their loader concatenates the sources: Hub (hf://) first, "
                    "then corpus-id JSON, then inline JSONL, each in the order given",
                )
            entries = ordered
        return entries if len(entries) > 1 else entries[0]

    # -- hard-negative mining ------------------------------------------------------------------
    def mining(self) -> None:
        """Their `mining:` keys (MineHardNegativesRecipe) in ours (`mine.hard_negatives`)."""
        node = self.data.get("mining")
        if not isinstance(node, dict) or not any(key in MINING_KEYS for key in node):
            return
        if "dist_env" in self.data:
            self.data.pop("dist_env")
            self.note("dist_env", "dropped: mining runs in one process here")
        if node.pop("train_qa_file_path", None) is not None:
            self.fail(
                "mining.train_qa_file_path",
                'their mining reads corpus-id JSON ({"corpus": [...], "data": [...]}); '
                "here give mining.queries (JSONL rows of query and pos_ids) and mining.corpus "
                "(JSONL rows of id and text)",
            )
        for their, ours in MINING_RENAMES.items():
            if their in node:
                value = node.pop(their)
                if their == "hard_neg_margin_type":
                    value = _MARGIN_TYPES.get(str(value).lower(), value)
                if their == "hard_neg_margin" and value is None:
                    self.fail(
                        "mining.hard_neg_margin",
                        "hard_neg_margin: null (no filtering) is not supported: give a margin "
                        "(0.95 with margin_type: relative keeps what scores below 95% of the "
                        "positive)",
                    )
                    continue
                self.put(f"mining.{ours}", value, f"mining.{their}")
        if "num_negatives" not in node:
            self.put("mining.num_negatives", 20, None, "NeMo AutoModel's default (20)")
        self.put("mining.min_negatives", 0, None, "they write every query, however few it has")
        for key, why in MINING_DROPS.items():
            if key in node:
                node.pop(key)
                self.note("mining", f"{key} dropped ({why})")
        if node.pop("use_negatives_from_file", False):
            self.fail(
                "mining.use_negatives_from_file",
                "keeping the input's own negatives before the mined ones is not supported; "
                "drop it (the mined negatives are written)",
            )
        for key in ("tokenizer_name_or_path", "add_bos_token", "add_eos_token"):
            value = node.pop(key, None)
            if value is not None and not (
                key == "tokenizer_name_or_path" and value == node.get("model")
            ):
                self.fail(
                    f"mining.{key}",
                    "mining here tokenizes with the tokenizer saved in the model folder, as it "
                    f"was trained; drop {key}",
                )
        shapes = [k for k in ("query_prefix", "passage_prefix", "query_max_length", "passage_max_length") if k in node]  # fmt: skip
        for key in shapes:
            node.pop(key)
        if shapes:
            self.note(
                "mining",
                f"{', '.join(shapes)} dropped: mining here embeds with the prefixes and the "
                "maximum length saved with the model (config_sentence_transformers.json, "
                "sentence_bert_config.json), as it was trained",
            )
        self.note(
            "mining",
            "they filter the whole corpus by the margin, then keep the best; here the top_k "
            "(default 50) best are searched, then filtered (raise mining.top_k if too few "
            "remain); the output is JSONL rows (query, pos_ids, neg_ids, neg_scores), not their "
            "corpus-id JSON",
        )
