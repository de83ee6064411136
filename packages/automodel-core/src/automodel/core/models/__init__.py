"""Model loading: any Hugging Face causal LM, vision-language model, embedding backbone or
sequence classifier from a checkpoint or a config, and its tokenizer or processor; `BiEncoder`
turns a backbone into an embedding model (pooling, normalisation, one or two towers).

```yaml
model:
  _target_: automodel.core.models.AutoModelForCausalLM.from_pretrained
  pretrained_model_name_or_path: Qwen/Qwen3-0.6B
  torch_dtype: bfloat16
```

```python
import torch
from automodel.core.models import AutoModel, BiEncoder, bidirectional

backbone = bidirectional(AutoModel.from_config({"model_type": "llama", "num_hidden_layers": 2}))
encoder = BiEncoder(backbone, pooling="mean", normalize=True)
batch = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3)}
queries, passages = encoder(batch, batch)  # [1, hidden] each, unit length
```

`repair_embedding_rows(model)` gives input-embedding rows a checkpoint left near zero the
direction of the token's LM-head row at the healthy rows' norm (before training).
"""

from ._auto_model import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForSequenceClassification,
    HFAutoModel,
)
from ._bi_encoder import POOLINGS, BiEncoder, bidirectional, pool
from ._config import check_auto_class, check_causal_lm, load_model_config
from ._documents import document_masking_problem
from ._dtype import DTYPE_NAMES, resolve_dtype
from ._embedding_repair import EmbeddingRepair, repair_embedding_rows
from ._tokenizer import load_processor, load_tokenizer

__all__ = [
    "DTYPE_NAMES",
    "POOLINGS",
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForImageTextToText",
    "AutoModelForSequenceClassification",
    "BiEncoder",
    "EmbeddingRepair",
    "HFAutoModel",
    "bidirectional",
    "check_auto_class",
    "check_causal_lm",
    "document_masking_problem",
    "load_model_config",
    "load_processor",
    "load_tokenizer",
    "pool",
    "repair_embedding_rows",
    "resolve_dtype",
]
