"""Train an embedding model (bi-encoder) from one YAML file: contrastive loss over each query's
positive, its hard negatives and the batch's other passages.

automodel finetune bi_encoder -c examples/retrieval/tiny_bi_encoder.yaml

The backbone is any Hugging Face model that returns hidden states (`automodel.core.models.
AutoModel`: BERT, ModernBERT, or a Llama/Qwen decoder made bidirectional); `bi_encoder:` says
how they become embeddings. What is the same as fine-tuning an LLM is finetune.llm's, taken by
name in `RetrievalLoop`: the loop with gradient accumulation (normalised by the step's queries), checkpoints,
exact resume and preemption. Validation searches a held-out corpus: recall@k, MRR@10, nDCG@10.
Checkpoints are Hugging Face model folders that sentence-transformers loads as they are.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from automodel.checkpoint import HF_WEIGHTS, MODEL_DIR, PEFT_ADAPTER, WeightsFormat
from automodel.core.config import ConfigNode, Section, recipe_main
from automodel.core.data import BiEncoderCollator, split_towers
from automodel.core.losses import contrastive_loss
from automodel.core.models import POOLINGS, BiEncoder, bidirectional
from automodel.core.training import retrieval_metric_sums

from .. import (
    MoeStep,
    adapter_extras_writer,
    build_lora_config,
    build_model,
    build_training,
    hf_extras_writer,
    preflight,
    prepare_model,
    read_section,
    restore_training_state,
    run_then_shutdown,
    shard_model,
    start_run,
)
from .._errors import config_problem
from ..llm._data import build_tokenizer
from ._data import RETRIEVAL_SECTIONS, Evaluation, IndexedCollator, build_retrieval_loaders
from ._loop import RetrievalLoop
from ._search import search_corpus
from ._sentence_transformers import SentenceTransformerFiles

log = logging.getLogger("automodel.recipes.retrieval")


@dataclass(frozen=True)
class BiEncoderOptions:
    """`bi_encoder:` how hidden states become embeddings, how texts are cut, and the loss."""

    pooling: str = "mean"  # mean | cls | last (the last real token: decoder LMs)
    normalize: bool = True  # L2-normalise: scores are cosine similarities
    bidirectional: bool = False  # a decoder LM's causal masking off
    query_prefix: str = ""  # e.g. "query: ", saved as the sentence-transformers prompt
    passage_prefix: str = ""  # e.g. "passage: "
    query_max_length: int = 64
    passage_max_length: int = 256
    temperature: float = 0.05  # scores are divided by it in the contrastive loss
    in_batch_negatives: bool = True  # the batch's other passages are negatives too
    gather_across_ranks: bool = True  # ... and every data-parallel rank's (with gradients)
    separate_towers: bool = False  # a passage tower of its own, starting as a copy of `model:`


# Separate towers: the BiEncoder's two models, each saved as a model folder of its own.
TOWERS = ("query_model", "passage_model")


SECTIONS = {**RETRIEVAL_SECTIONS, "bi_encoder": Section(keys_of=BiEncoderOptions)}


class BiEncoderRecipe(RetrievalLoop):
    """Contrastive training of an embedding model: `setup()`, then the train/validation loop."""

    def setup(self) -> None:
        """Build every piece from the config, in the order infrastructure must be applied."""
        cfg = self.cfg
        options = check(cfg)
        self.options = options
        self.evaluation = read_section(cfg, "evaluation", Evaluation)
        self.lora = build_lora_config(cfg)
        weights = PEFT_ADAPTER if self.lora is not None else HF_WEIGHTS
        if options.separate_towers:
            weights = WeightsFormat(parts=TOWERS)
        self.run = ctx = start_run(
            cfg, default_run_dir="runs/bi_encoder", weights_format=weights, unused_parameters=True
        )  # an encoder's pooler layer gets no gradient: DDP lets such parameters be
        self.tokenizer = self.preprocessor = build_tokenizer(cfg)  # saved beside the model
        backbone = build_model(cfg)
        if options.bidirectional:
            bidirectional(backbone)
        passage_tower = copy.deepcopy(backbone) if options.separate_towers else None
        encoder = BiEncoder(
            backbone, passage_tower, pooling=options.pooling, normalize=options.normalize
        )
        st_files = SentenceTransformerFiles(
            backbone.config.hidden_size, options.pooling, options.normalize,
            options.passage_max_length, options.query_prefix, options.passage_prefix,
            TOWERS if options.separate_towers else None,
        )  # fmt: skip
        if options.separate_towers:  # checkpoints hold both towers, each a model folder
            self.unwrapped = prepare_model(encoder, ctx)
            self.write_hf_extras = towers_extras_writer(encoder, cfg, self.tokenizer, st_files)
        else:  # checkpoints hold the one tower
            self.unwrapped = prepare_model(backbone, ctx, lora=self.lora)
            write_extras = adapter_extras_writer if self.lora is not None else hf_extras_writer
            self.write_hf_extras = write_extras(backbone, cfg, self.tokenizer, st_files)
        self.moe = MoeStep(backbone, None, self.parallel)
        self.model = shard_model(encoder, ctx)  # one forward per micro-batch: queries, passages

        local = self.step_scheduler.local_batch_size
        collate = BiEncoderCollator(
            self.tokenizer, options.query_max_length, options.passage_max_length,
            options.query_prefix, options.passage_prefix,
        )  # fmt: skip
        self.passages = collate.passages  # validation embeds the corpus as training does
        shard = (ctx.seed, self.parallel.dp_rank, self.parallel.dp_size)
        self.train_set, self.train_loader, self.eval_set, self.val_loader = build_retrieval_loaders(
            cfg, collate, IndexedCollator(collate.queries), local, *shard
        )
        self.optimizer, self.lr_scheduler, self.telemetry, self.optimizer_step, total = (
            build_training(ctx, self.unwrapped, self.train_loader, self.moe)
        )
        restore_training_state(ctx, self.unwrapped, self.telemetry, **self.training_state())
        params = sum(p.numel() for p in self.unwrapped.parameters()) / 1e6
        log.info(
            "model: %s, %.2fM parameters on %s, %s pooling%s; %d training steps",
            type(self.unwrapped).__name__, params, self.device, options.pooling,
            ", normalised" if options.normalize else "", total,
        )  # fmt: skip

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """What the step's loss is normalised by, in one micro-batch: its queries."""
        return batch["query_input_ids"].shape[0]

    def real_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Query and passage tokens that are not padding, for throughput."""
        return int(batch["query_attention_mask"].sum() + batch["passage_attention_mask"].sum())

    def forward_loss(self, batch: dict[str, torch.Tensor], num_queries: int) -> torch.Tensor:
        """InfoNCE of one micro-batch, normalised by the step's queries on every rank."""
        query, passage = split_towers({k: v.to(self.device) for k, v in batch.items()})
        queries, passages = self.model(query, passage)
        options = self.options
        return contrastive_loss(
            queries, passages, temperature=options.temperature,
            in_batch_negatives=options.in_batch_negatives,
            group=self.parallel.group if options.gather_across_ranks else None,
            num_queries=num_queries,
        )  # fmt: skip

    def validation_totals(self, batches: Any) -> tuple[float, int, dict[str, tuple[float, int]]]:
        """(summed loss, queries, {metric: (sum, queries)}) of this rank's held-out queries,
        searched over the whole held-out corpus; the loss is each query's contrastive loss
        against every passage of the corpus."""
        rows, embedded = [], []
        for batch in batches:
            rows.append(batch.pop("index"))
            embedded.append(self.model({k: v.to(self.device) for k, v in batch.items()})[0])
        rows = torch.cat(rows).tolist()
        queries = torch.cat(embedded)
        relevant = [self.eval_set.relevant[row] for row in rows]
        k = max(10, *self.evaluation.recall_at)

        def encode(texts: list[str]) -> torch.Tensor:
            batch = {key: v.to(self.device) for key, v in self.passages(texts).items()}
            return self.model(None, batch)[1]

        found = search_corpus(
            queries, self.eval_set.corpus, encode, k=k, relevant=relevant,
            temperature=self.options.temperature, chunk_size=self.evaluation.corpus_chunk_size,
            group=self.parallel.group,
        )  # fmt: skip
        losses = found.log_sum_all - found.log_sum_relevant  # -log P(relevant | whole corpus)
        sums = retrieval_metric_sums(found.top.indices, relevant, self.evaluation.recall_at)
        return float(losses.sum()), len(rows), sums


def towers_extras_writer(
    encoder: BiEncoder, cfg: ConfigNode, tokenizer: Any, st_files: SentenceTransformerFiles
) -> Callable[[Path], None]:
    """A two-tower checkpoint's files beside the weights: each tower's HF config and tokenizer
    in its folder, the sentence-transformers router over both at the model folder's root."""
    writers = [
        hf_extras_writer(getattr(encoder, name), cfg, tokenizer, subfolder=f"{MODEL_DIR}/{name}")
        for name in TOWERS
    ]

    def write(path: Path) -> None:
        for tower in writers:
            tower(path)
        st_files.save_pretrained(path / MODEL_DIR)

    return write


def run(cfg: ConfigNode) -> None:
    """Set up the recipe and train; then free sharded modules and end the process group."""
    recipe = BiEncoderRecipe(cfg)
    run_then_shutdown(recipe, recipe.setup, recipe.run_train_validation_loop)


def check(cfg: ConfigNode) -> BiEncoderOptions:
    """Pre-flight checks that need no model: the shared ones and the `bi_encoder:` options."""
    preflight(cfg, data_parallel_only="retrieval models")
    options = read_section(cfg, "bi_encoder", BiEncoderOptions)
    if options.pooling not in POOLINGS:
        message = f"expected one of {', '.join(POOLINGS)}, got {options.pooling!r}"
        raise config_problem(cfg, "bi_encoder.pooling", message)
    if options.temperature <= 0:
        raise config_problem(cfg, "bi_encoder.temperature", "must be > 0")
    for key in ("query_max_length", "passage_max_length"):
        if getattr(options, key) < 1:
            raise config_problem(cfg, f"bi_encoder.{key}", "must be >= 1")
    if options.separate_towers and "peft" in cfg:
        message = (
            "LoRA adapters are saved for one tower; train separate towers in full "
            "(drop peft:), or LoRA on one shared tower (separate_towers: false)"
        )
        raise config_problem(cfg, "bi_encoder.separate_towers", message)
    return options


def main(argv: list[str] | None = None) -> int:
    """Train an embedding model (bi-encoder) on queries with positive and negative passages."""
    return recipe_main(argv, sections=SECTIONS, run=run, check=check)
