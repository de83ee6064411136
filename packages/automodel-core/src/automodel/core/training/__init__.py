"""Training-loop utilities: step scheduling, metrics, FLOPs/MFU, RNG state, gradient clipping.

```python
from automodel.core.training import StepScheduler, clip_grad_norm

steps = StepScheduler(global_batch_size=32, local_batch_size=4, dp_size=2, max_steps=1000)
for micro_batches in steps.steps(dataloader):
    ...
    grad_norm = clip_grad_norm(model.parameters(), max_norm=1.0)
```

Retrieval evaluation keeps each query's top k while the corpus is scored chunk by chunk
(`TopK`), then scores the ranking with recall@k, MRR@10 and nDCG@10 (binary relevance):

```python
from automodel.core.training import TopK, retrieval_metric_sums, retrieval_metrics

top = TopK(num_queries=len(q_emb), k=10)
for start in range(0, len(corpus_emb), 4096):
    top.add(q_emb @ corpus_emb[start : start + 4096].T, first_index=start)
metrics = retrieval_metrics(top.indices, relevant)  # {"recall@1": ..., "ndcg@10": ...}
# data parallel: all-reduce the (sum, count) pairs of retrieval_metric_sums, then divide
```
"""

from ._accuracy import exact_match_counts
from ._batch_math import check_batch_math
from ._flops import (
    PEAK_BF16_FLOPS,
    dense_decoder_flops_per_token,
    mfu,
    peak_flops_for_device,
    training_flops_per_token,
)
from ._grad import clip_grad_norm
from ._metrics import MetricsSample, peak_memory_gib
from ._retrieval_metrics import TopK, retrieval_metric_sums, retrieval_metrics
from ._rng import GlobalRngState, rng_state, set_rng_state, set_seed
from ._step_scheduler import StepScheduler

__all__ = [
    "PEAK_BF16_FLOPS",
    "GlobalRngState",
    "MetricsSample",
    "StepScheduler",
    "TopK",
    "check_batch_math",
    "clip_grad_norm",
    "dense_decoder_flops_per_token",
    "exact_match_counts",
    "mfu",
    "peak_flops_for_device",
    "peak_memory_gib",
    "retrieval_metric_sums",
    "retrieval_metrics",
    "rng_state",
    "set_rng_state",
    "set_seed",
    "training_flops_per_token",
]
