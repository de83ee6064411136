"""Train a reranker (cross-encoder) from one YAML file: each query is read together with each of
its passages, and the positive must score above the hard negatives (group-wise cross-entropy).

automodel finetune cross_encoder -c examples/retrieval/tiny_cross_encoder.yaml

The model is any Hugging Face sequence classifier with one output (`automodel.core.models.
AutoModelForSequenceClassification`, `num_labels: 1`). The loop, checkpoints, exact resume and
preemption are finetune.llm's, taken by name in `RetrievalLoop`. Validation reranks each held-out query's
candidates (its positives and `neg_ids`): MRR@10, nDCG@10, recall@k. Checkpoints are Hugging
Face model folders that `sentence_transformers.CrossEncoder` loads as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from automodel.checkpoint import HF_WEIGHTS, PEFT_ADAPTER
from automodel.core.config import ConfigNode, Section, recipe_main
from automodel.core.data import CrossEncoderCollator, RetrievalEvalSet
from automodel.core.losses import listwise_cross_entropy
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
from ._data import RETRIEVAL_SECTIONS, Evaluation, build_retrieval_loaders
from ._loop import RetrievalLoop

log = logging.getLogger("automodel.recipes.retrieval")


@dataclass(frozen=True)
class CrossEncoderOptions:
    """`cross_encoder:` how long a (query, passage) pair may be."""

    max_length: int = 512


SECTIONS = {**RETRIEVAL_SECTIONS, "cross_encoder": Section(keys_of=CrossEncoderOptions)}


class CrossEncoderRecipe(RetrievalLoop):
    """Group-wise training of a reranker: `setup()`, then the train/validation loop."""

    def setup(self) -> None:
        """Build every piece from the config, in the order infrastructure must be applied."""
        cfg = self.cfg
        options = check(cfg)
        self.evaluation = read_section(cfg, "evaluation", Evaluation)
        self.lora = build_lora_config(cfg)
        weights = PEFT_ADAPTER if self.lora is not None else HF_WEIGHTS
        self.run = ctx = start_run(
            cfg, default_run_dir="runs/cross_encoder", weights_format=weights,
            unused_parameters=True,
        )  # fmt: skip
        self.tokenizer = self.preprocessor = build_tokenizer(cfg)  # saved beside the model
        self.tokenizer.model_max_length = options.max_length  # CrossEncoder(path) cuts there too
        model = build_model(cfg)
        if getattr(model.config, "num_labels", None) != 1:
            message = f"a reranker scores with one output; the model has num_labels={model.config.num_labels} (add `num_labels: 1`)"  # fmt: skip
            raise config_problem(cfg, "model", message)
        if model.config.pad_token_id is None:  # the classifier finds each pair's last token by it
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.unwrapped = model = prepare_model(model, ctx, lora=self.lora)
        write_extras = adapter_extras_writer if self.lora is not None else hf_extras_writer
        self.write_hf_extras = write_extras(model, cfg, self.tokenizer)
        self.moe = MoeStep(model, None, self.parallel)
        self.model = shard_model(model, ctx)

        local = self.step_scheduler.local_batch_size
        self.pairs = CrossEncoderCollator(self.tokenizer, options.max_length)
        shard = (ctx.seed, self.parallel.dp_rank, self.parallel.dp_size)
        self.train_set, self.train_loader, self.eval_set, self.val_loader = build_retrieval_loaders(
            cfg, self.pairs, self.candidate_pairs, local, *shard
        )
        if self.eval_set is not None and self.eval_set.candidates is None:
            message = "a reranker is validated on candidates: give each row `neg_ids` beside `pos_ids`"  # fmt: skip
            raise config_problem(cfg, "validation_dataset", message)
        self.group = 1 + self.train_set.num_negatives  # passages per query
        self.optimizer, self.lr_scheduler, self.telemetry, self.optimizer_step, total = (
            build_training(ctx, self.unwrapped, self.train_loader, self.moe)
        )
        restore_training_state(ctx, self.unwrapped, self.telemetry, **self.training_state())
        params = sum(p.numel() for p in self.unwrapped.parameters()) / 1e6
        log.info(
            "model: %s, %.2fM parameters on %s; %d passages per query; %d training steps",
            type(model).__name__, params, self.device, self.group, total,
        )  # fmt: skip

    def count_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """What the step's loss is normalised by, in one micro-batch: its queries."""
        return batch["input_ids"].shape[0] // self.group

    def real_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Pair tokens that are not padding, for throughput."""
        return int(batch["attention_mask"].sum())

    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One score (the logit) per (query, passage) pair of the batch."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self.model(**batch).logits.squeeze(-1).float()

    def forward_loss(self, batch: dict[str, torch.Tensor], num_queries: int) -> torch.Tensor:
        """Group-wise cross-entropy of one micro-batch (positive first in each group)."""
        return listwise_cross_entropy(self.scores(batch).view(-1, self.group), num_queries)

    def candidate_pairs(self, items: list[tuple[int, str]]) -> dict[str, torch.Tensor]:
        """Validation batches: each query paired with each of its candidates."""
        candidates = self.eval_set.candidates
        queries = [query for index, query in items for _ in candidates[index]]
        passages = [self.eval_set.corpus[c] for index, _ in items for c in candidates[index]]
        return {
            "index": torch.tensor([index for index, _ in items]),
            "group_size": torch.tensor([len(candidates[index]) for index, _ in items]),
            **self.pairs.pairs(queries, passages),
        }

    def validation_totals(self, batches: Any) -> tuple[float, int, dict[str, tuple[float, int]]]:
        """(summed loss, queries, {metric: (sum, queries)}) of this rank's held-out queries, each
        reranking its candidates; the loss is -log P(relevant | candidates)."""
        eval_set: RetrievalEvalSet = self.eval_set
        total_loss, count = 0.0, 0
        ranked, relevant = [], []
        width = max(10, *self.evaluation.recall_at)  # ranks kept per query: MRR@10, recall@k
        for batch in batches:
            rows, sizes = batch.pop("index").tolist(), batch.pop("group_size").tolist()
            for row, scores in zip(rows, self.scores(batch).split(sizes), strict=True):
                ids = eval_set.candidates[row]
                candidates = torch.tensor(ids, device=scores.device)
                hits = torch.tensor(
                    [c in eval_set.relevant[row] for c in ids], device=scores.device
                )
                log_all = torch.logsumexp(scores, 0)
                total_loss += float(log_all - torch.logsumexp(scores[hits], 0))
                order = candidates[scores.argsort(descending=True, stable=True)][:width]
                ranked.append(torch.nn.functional.pad(order, (0, width - len(order)), value=-1))
                relevant.append(eval_set.relevant[row])
                count += 1
        top = torch.stack(ranked) if ranked else torch.empty(0, width, dtype=torch.long)
        sums = retrieval_metric_sums(top.cpu(), relevant, self.evaluation.recall_at)
        return total_loss, count, sums


def run(cfg: ConfigNode) -> None:
    """Set up the recipe and train; then free sharded modules and end the process group."""
    recipe = CrossEncoderRecipe(cfg)
    run_then_shutdown(recipe, recipe.setup, recipe.run_train_validation_loop)


def check(cfg: ConfigNode) -> CrossEncoderOptions:
    """Pre-flight checks that need no model: the shared ones and `cross_encoder:`."""
    preflight(cfg, data_parallel_only="retrieval models")
    options = read_section(cfg, "cross_encoder", CrossEncoderOptions)
    if options.max_length < 2:
        raise config_problem(cfg, "cross_encoder.max_length", "must be >= 2")
    return options


def main(argv: list[str] | None = None) -> int:
    """Train a reranker (cross-encoder) on queries with positive and negative passages."""
    return recipe_main(argv, sections=SECTIONS, run=run, check=check)
