"""The translator's retrieval pass: their bi-encoder and cross-encoder configs in our sections
(their datasets and mining keys: `_translate_retrieval_data`).

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

from ._aliases import BI_COLLATORS, BI_ENCODERS, CROSS_COLLATORS, CROSS_ENCODERS, TARGET_KEY
from ._translate_retrieval_data import _RetrievalDataPasses

_POOLINGS = {"avg": "mean", "mean": "mean", "cls": "cls", "last": "last"}
_PROMPT = "question:{query} \n \n passage:{passage}"  # their CrossEncoderCollator's default
_LLAMA_TYPES = ("llama", "llama_bidirec")  # their cross-encoder's own (bidirectional) Llama head


class _RetrievalPasses(_RetrievalDataPasses):
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
        self.instruction_loaders = set()
        for name in ("dataloader", "validation_dataloader"):
            self.collator(name)
        for name in ("dataset", "validation_dataset"):
            self.retrieval_data(name, kind)
        self.mining()

    # -- the model -----------------------------------------------------------------------------
    def embedder(self, model: dict[str, Any]) -> None:
        """`NeMoAutoModelBiEncoder.from_pretrained`: the backbone, pooled, made bidirectional."""
        part = model.pop("extract_submodel", None)
        if part is not None:  # e.g. a VLM's language_model, trained alone as the embedder
            model["submodel"] = part
            self.move("model.extract_submodel", "model.submodel")
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
                self.instruction_loaders.add(name)
                for key in ("query_prefix", "passage_prefix"):
                    collate[key] = ""
                self.note(
                    path,
                    "use_dataset_instruction: their collator then joins the dataset's "
                    "instructions (dataset.instructions here) to the texts instead of "
                    "query_prefix/passage_prefix",
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
