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
_TO_OURS = (
    "write the rows as JSONL ({query, pos_ids, neg_ids}) and the corpus as JSONL ({id, text}), "
    "then dataset: {_target_: automodel.core.data.retrieval_dataset, path: <rows>, corpus: "
    "<corpus>, num_negatives: n_passages - 1}; or give inline rows ({query, pos_doc, neg_doc}) "
    "in one .jsonl file"
)


class _RetrievalDataPasses(_TranslatorBase):
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
        if passages > 1:
            self.note(
                name,
                "their rows give the first n_passages - 1 negatives in order (cycled when "
                "fewer); here a row with more than num_negatives negatives has them sampled "
                "with the seed: the same passages for rows with at most num_negatives",
            )
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

    def source(self, name: str, node: dict[str, Any], inline_only: bool) -> str | None:
        """The one local inline JSONL file of `data_dir_list`; a problem for anything else."""
        key = f"{name}.data_dir_list"
        sources = node.get("data_dir_list")
        if sources is None:
            self.fail(key, "data_dir_list is required: the training rows")
            return None
        entries = sources if isinstance(sources, list) else [sources]
        paths = [str(e.get("path") if isinstance(e, dict) else e) for e in entries]
        hub = [p for p in paths if p.startswith("hf://")]
        if hub:
            self.fail(
                key,
                f"{', '.join(repr(p) for p in hub)}: their Hub layout (a '<subset>' split of "
                "questions with pos_doc and neg_doc ids, a '<subset>_corpus' split and "
                "dataset_metadata.json) is not something retrieval_dataset reads (online or "
                f"not): download it, {_TO_OURS}",
            )
            return None
        if len(entries) != 1:
            self.fail(
                key,
                f"{len(entries)} sources: retrieval_dataset here reads one file (or one Hub "
                "dataset): put their rows into one JSONL file",
            )
            return None
        entry = entries[0]
        if isinstance(entry, dict) and entry.get("num_samples") is not None:
            self.fail(
                f"{key}.num_samples",
                "num_samples (a seeded random sample of that many rows) is not supported: "
                "write the rows to train on into the one file retrieval_dataset reads",
            )
            return None
        path = paths[0]
        suffix = Path(path).suffix.lower()
        if suffix == ".jsonl" or (inline_only and suffix == ".json"):
            return path
        if inline_only:
            self.fail(key, f"'{path}': their inline loader reads .json or .jsonl files")
        else:
            self.fail(
                key,
                f'\'{path}\' is read there as their corpus-id JSON ({{"corpus": [{{"path": '
                '<corpus folder>}], "data": [{question, corpus_id, pos_doc: [{id}], neg_doc: '
                f"[...]}}]}}), whose corpora are their Merlin corpus folders: {_TO_OURS}",
            )
        return None

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
