"""The translator's retrieval pass: their bi-encoder and cross-encoder configs in our sections.

Their retrieval settings live in their model class (`NeMoAutoModelBiEncoder.from_pretrained(
pooling, l2_normalize, do_distributed_inbatch_negative, ...)`), their collator
(`BiEncoderCollator(q_max_len, p_max_len, query_prefix, passage_prefix)`,
`CrossEncoderCollator(rerank_max_length, prompt_template)`), their dataset config
(`RetrievalDatasetConfig(data_dir_list, n_passages, ...)`) and a top-level `temperature`; here
they are the `bi_encoder:` / `cross_encoder:` sections and `retrieval_dataset`'s arguments.
This pass runs before the target pass: it takes out what moves to another section and
converts the values (their `avg` pooling is `mean`, their collator joins a prefix to the text
with a space, `n_passages` counts the positive); the target pass then renames what is left
(the model's path, `data_dir_list`) through the alias table. Their mining config's `mining:`
keys (`MineHardNegativesRecipe`) are renamed here too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ._aliases import (
    BI_COLLATORS,
    BI_ENCODERS,
    CROSS_COLLATORS,
    CROSS_ENCODERS,
    INLINE_DATASETS,
    RETRIEVAL_DATASETS,
    TARGET_KEY,
)
from ._keys import MINING_DROPS, MINING_KEYS, MINING_RENAMES
from ._translator_base import _TranslatorBase

_POOLINGS = {"avg": "mean", "mean": "mean", "cls": "cls", "last": "last"}
_PROMPT = "question:{query} \n \n passage:{passage}"  # their CrossEncoderCollator's default
_MARGIN_TYPES = {"perc": "relative", "abs": "absolute"}
_LLAMA_TYPES = ("llama", "llama_bidirec")  # their cross-encoder's own (bidirectional) Llama head
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


class _RetrievalPasses(_TranslatorBase):
    def retrieval(self) -> None:
        """Their retrieval model, collators, datasets and `temperature`; their `mining:` keys."""
        model = self.data.get("model")
        target = model.get(TARGET_KEY) if isinstance(model, dict) else None
        kind = {"finetune.bi_encoder": "bi", "finetune.cross_encoder": "cross"}.get(
            self.recipe or ""
        )
        if isinstance(model, dict) and target in BI_ENCODERS:
            kind = "bi"
            self.embedder(model)
        elif isinstance(model, dict) and target in CROSS_ENCODERS:
            kind = "cross"
            self.reranker(model)
        self.temperature(kind, their_model=target in BI_ENCODERS)
        for name in ("dataloader", "validation_dataloader"):
            self.collator(name)
        for name in ("dataset", "validation_dataset"):
            self.retrieval_data(name, kind)
        self.mining()

    # -- helpers -------------------------------------------------------------------------------
    def put(
        self, ours: str, value: Any, old: str | None = None, message: str | None = None
    ) -> None:
        """Set our `section.key` to `value`, which the user wrote at `old` (None: a default)."""
        section, key = ours.split(".")
        node = self.section(section)
        if old is None and key in node:  # a default: what the user set there wins
            return
        if key in node and node[key] != value:
            where = old or ours
            self.fail(
                where,
                f"{where} gives {ours} = {value!r} but {ours} is {node[key]!r}; keep one",
            )
            return
        node[key] = value
        if old is not None:
            self.move(old, ours, message)
        else:
            self.changed.setdefault(ours, message or "NeMo AutoModel's default, written out")

    # -- the model -----------------------------------------------------------------------------
    def embedder(self, model: dict[str, Any]) -> None:
        """`NeMoAutoModelBiEncoder.from_pretrained`: the backbone, pooled, made bidirectional."""
        if model.get("extract_submodel") is not None:
            self.fail(
                "model.extract_submodel",
                "training a submodel of a bigger model (e.g. a VLM's language_model) is not "
                "supported: save that submodel with save_pretrained and point "
                "pretrained_model_name_or_path at it",
            )
        model.pop("extract_submodel", None)
        pooling = model.pop("pooling", None)
        if pooling is None:
            self.put("bi_encoder.pooling", "mean", None, "NeMo AutoModel's default (avg)")
        elif str(pooling) in _POOLINGS:
            self.put("bi_encoder.pooling", _POOLINGS[str(pooling)], "model.pooling", f"was model.pooling: {pooling}")  # fmt: skip
        else:
            self.fail(
                "model.pooling",
                f"pooling {pooling!r} is not supported (weighted_avg sums the token states, "
                "colbert/multi_vector keep one vector per token); use avg, cls or last",
            )
        normalize = model.pop("l2_normalize", None)
        if normalize is None:
            self.put("bi_encoder.normalize", True, None)
        else:
            self.put("bi_encoder.normalize", bool(normalize), "model.l2_normalize")
        self.put(
            "bi_encoder.bidirectional",
            True,
            None,
            "their bi-encoder always turns causal attention off (Llama: their bidirectional "
            "class; other models: config.is_causal = false; encoders such as BERT already are)",
        )
        gather = model.pop("do_distributed_inbatch_negative", False)
        detach = model.pop("detach_distributed_inbatch_negatives", True)
        old = "model.do_distributed_inbatch_negative" if gather else None
        if gather and detach:
            self.fail(
                "model.do_distributed_inbatch_negative",
                "with do_distributed_inbatch_negative their default detaches the passages "
                "gathered from the other ranks (no gradient flows back to them); here they are "
                "gathered with their gradients: set detach_distributed_inbatch_negatives: false "
                "to train that way (with one process the two are the same)",
            )
            return
        message = (
            "do_distributed_inbatch_negative: true: every passage of every rank is a negative"
            if gather
            else "do_distributed_inbatch_negative: false: each query is scored against its own "
            "n_passages only (NeMo AutoModel's default)"
        )
        self.put("bi_encoder.in_batch_negatives", bool(gather), old, message)
        self.put("bi_encoder.gather_across_ranks", bool(gather), old, "as in_batch_negatives")

    def reranker(self, model: dict[str, Any]) -> None:
        """`NeMoAutoModelCrossEncoder.from_pretrained`: a sequence classifier with one output."""
        labels = model.get("num_labels")
        if labels is None:
            model["num_labels"] = 1
            self.changed["model.num_labels"] = (
                "one score per (query, passage) pair, as their recipe needs"
            )
        elif labels != 1:
            self.fail(
                "model.num_labels",
                f"num_labels: {labels}: a reranker scores each pair with one output; set 1",
            )
        name = model.get("pretrained_model_name_or_path")
        found = _model_type(name)
        llama = found in _LLAMA_TYPES if found else "llama" in str(name).lower()
        given = [key for key in ("pooling", "temperature") if key in model]
        pooling = model.pop("pooling", "avg")
        temperature = model.pop("temperature", 1.0)
        if llama:
            self.fail(
                "model._target_",
                f"their cross-encoder on a Llama backbone ({name}) is their bidirectional "
                f"Llama with a score head over {pooling} pooling (divided by temperature "
                f"{temperature}); here a reranker is Hugging Face's sequence classifier "
                "(LlamaForSequenceClassification: causal attention, the last token's score), "
                "another model: use an encoder backbone (BERT, ModernBERT, XLM-R), or write "
                "model: {_target_: automodel.core.models.AutoModelForSequenceClassification."
                "from_pretrained, num_labels: 1} to train that head knowingly",
            )
        elif given:
            self.note(
                "model",
                f"{' and '.join(given)} dropped: their cross-encoder uses them only for Llama "
                "backbones (their own score head); other models get Hugging Face's head there "
                "too",
            )

    def temperature(self, kind: str | None, their_model: bool) -> None:
        """Their top-level `temperature`: the bi-encoder's InfoNCE scale (with l2_normalize)."""
        data = self.data
        if kind == "cross" and "temperature" in data:
            data.pop("temperature")
            self.note("temperature", "dropped: their cross-encoder recipe does not read it")
            return
        if kind != "bi" or ("temperature" not in data and not their_model):
            return
        normalize = self.section("bi_encoder").get("normalize", True)
        old = "temperature" if "temperature" in data else None
        value = data.pop("temperature", 1.0)
        if not normalize:  # their recipe divides the scores by it only with l2_normalize
            self.put(
                "bi_encoder.temperature",
                1.0,
                None,
                f"1.0: their recipe scales scores by temperature ({value}) only with "
                "l2_normalize: true",
            )
        elif old is not None:
            self.put("bi_encoder.temperature", value, old)
        else:
            self.put("bi_encoder.temperature", value, None, "NeMo AutoModel's default (1.0)")

    # -- the collators -------------------------------------------------------------------------
    def collator(self, name: str) -> None:
        """Their collators' lengths and prefixes are the bi_encoder:/cross_encoder: sections."""
        loader = self.data.get(name)
        collate = loader.get("collate_fn") if isinstance(loader, dict) else None
        if not isinstance(collate, dict):
            return
        target = collate.get(TARGET_KEY)
        path = f"{name}.collate_fn"
        if target in (*BI_COLLATORS, *CROSS_COLLATORS):
            section = "bi_encoder" if target in BI_COLLATORS else "cross_encoder"
            self.moved_collators.add(name)
            self.changed[name] = f"collate_fn: {target.rsplit('.', 1)[-1]}, now {section}:"
        if target in BI_COLLATORS:
            if collate.pop("use_dataset_instruction", False):
                for key in ("query_prefix", "passage_prefix"):
                    collate[key] = ""
                self.note(
                    path,
                    "use_dataset_instruction: their collator then prefixes the dataset's "
                    "instructions (none for inline rows) instead of query_prefix/passage_prefix",
                )
            for their, ours, default in (
                ("q_max_len", "query_max_length", 512),
                ("p_max_len", "passage_max_length", 512),
            ):
                old = f"{path}.{their}" if their in collate else None
                self.put(f"bi_encoder.{ours}", collate.pop(their, default), old)
            for key in ("query_prefix", "passage_prefix"):
                old = f"{path}.{key}" if key in collate else None
                prefix = str(collate.pop(key, "") or "")
                ours = prefix + " " if prefix else ""  # they join prefix and text with a space
                message = f"was {path}.{key}: {prefix!r} (their collator adds a space)"
                self.put(f"bi_encoder.{key}", ours, old, message if prefix else None)
        elif target in CROSS_COLLATORS:
            length = collate.pop("rerank_max_length", None)
            if length is None:
                self.fail(f"{path}.rerank_max_length", "rerank_max_length is required")
            else:
                self.put("cross_encoder.max_length", length, f"{path}.rerank_max_length")
            template = collate.pop("prompt_template", _PROMPT)
            if template != _PROMPT:
                self.fail(
                    f"{path}.prompt_template",
                    "a prompt template is not supported: the reranker here reads each (query, "
                    "passage) as a text pair (tokenizer(query, passage)); drop prompt_template",
                )
            else:
                self.note(
                    path,
                    "their collator writes each pair as one text 'question:{query} \\n \\n "
                    "passage:{passage}'; here the tokenizer encodes (query, passage) as a text "
                    "pair ([CLS] query [SEP] passage [SEP] for BERT): the same pairs, other tokens",
                )

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


def _model_type(name: Any) -> str | None:
    """The `model_type` of a model folder's or the Hub cache's config.json (no download)."""
    if not name:
        return None
    config = Path(os.path.expanduser(str(name))) / "config.json"
    if not config.is_file():
        config = _cached_config(str(name))
    if config is None:
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _cached_config(repo: str) -> Path | None:
    """A Hub model's config.json in the local Hugging Face cache, if it was downloaded."""
    home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    folder = Path(os.environ.get("HF_HUB_CACHE", os.path.join(home, "hub")))
    folder = folder / ("models--" + repo.replace("/", "--"))
    ref = folder / "refs" / "main"
    if ref.is_file():
        config = folder / "snapshots" / ref.read_text(encoding="utf-8").strip() / "config.json"
        if config.is_file():
            return config
    found = sorted(folder.glob("snapshots/*/config.json"))
    return found[0] if found else None
