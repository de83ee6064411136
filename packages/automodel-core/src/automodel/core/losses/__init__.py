"""Causal-LM losses (masked, chunked, fused-linear CE, distillation) and retrieval losses.

The causal-LM losses sum the float32 cross-entropy of the tokens whose label is not
`ignore_index` and divide by `num_label_tokens` (the label tokens of the whole optimizer step:
every micro-batch and every data-parallel rank) or, when it is None, by the count in this batch.
Labels must already be aligned with the logits: `labels[..., s]` is the target of
`logits[..., s, :]`. Labels laid out like `input_ids` become next-token targets with
`shift_labels`.

```python
from automodel.core.losses import FusedLinearCrossEntropy, count_label_tokens, shift_labels

loss_fn = FusedLinearCrossEntropy()  # 512 label tokens' logits at a time
labels = [shift_labels(mb["labels"]) for mb in micro_batches]
num_label_tokens = sum(count_label_tokens(lab) for lab in labels)  # all-reduce across DP too
for mb, lab in zip(micro_batches, labels):
    hidden = model.model(mb["input_ids"]).last_hidden_state
    loss_fn(hidden, model.lm_head.weight, lab, num_label_tokens).backward()
```

`FusedLinearKDLoss` distils a frozen teacher into the student on the same label tokens:
`(1 - kd_ratio) * CE + kd_ratio * T^2 * KL(softmax(teacher / T) || softmax(student / T))`,
both terms summed over the label tokens and normalised as above, chunk by chunk through both
LM heads (neither model's full logits are built; the teacher gets no gradient):

```python
from automodel.core.losses import FusedLinearKDLoss

kd_fn = FusedLinearKDLoss(kd_ratio=0.5, temperature=2.0)
for mb, lab in zip(micro_batches, labels):
    hidden = model.model(mb["input_ids"]).last_hidden_state
    with torch.no_grad():
        teacher_hidden = teacher.model(mb["input_ids"]).last_hidden_state
    loss, ce, kl = kd_fn(
        hidden, model.lm_head.weight, teacher_hidden, teacher.lm_head.weight, lab,
        num_label_tokens, return_parts=True,  # ce and kl: detached, for logging
    )
    loss.backward()
```

Retrieval losses are normalised the same way, by `num_queries` (the queries of the whole step)
in place of the label tokens. `contrastive_loss` is InfoNCE for a bi-encoder, each query's
passages laid out as `[positive, hard negatives...]`; with a data-parallel `group` every rank's
passages become in-batch negatives of every query (gathered with gradients).
`listwise_cross_entropy` is the cross-encoder's loss over each query's group of scores:

```python
from automodel.core.losses import contrastive_loss, listwise_cross_entropy

num_queries = sum(len(mb["queries"]) for mb in micro_batches)  # all-reduce across DP too
for mb in micro_batches:
    q, p = encode(mb["queries"]), encode(mb["passages"])  # [nq, d], [nq * g, d]
    loss = contrastive_loss(q, p, temperature=0.02, group=dp_group, num_queries=num_queries)
    (loss * dp_size).backward()  # DDP averages gradients over the ranks
    # reranker: listwise_cross_entropy(reranker(mb).view(nq, g), num_queries).backward()
```
"""

from ._chunked import ChunkedCrossEntropy
from ._contrastive import contrastive_loss, listwise_cross_entropy
from ._fused_kd import FusedLinearKDLoss
from ._fused_linear import FusedLinearCrossEntropy
from ._fused_model import FusedLossModel
from ._labels import IGNORE_INDEX, count_label_tokens, shift_labels
from ._masked import MaskedCrossEntropy

__all__ = [
    "IGNORE_INDEX",
    "ChunkedCrossEntropy",
    "FusedLinearCrossEntropy",
    "FusedLinearKDLoss",
    "FusedLossModel",
    "MaskedCrossEntropy",
    "contrastive_loss",
    "count_label_tokens",
    "listwise_cross_entropy",
    "shift_labels",
]
