"""Model loading: any Hugging Face causal LM from a checkpoint or a config, and its tokenizer.

```yaml
model:
  _target_: automodel.core.models.AutoModelForCausalLM.from_pretrained
  pretrained_model_name_or_path: Qwen/Qwen3-0.6B
  torch_dtype: bfloat16
```
"""

from ._causal_lm import AutoModelForCausalLM
from ._config import check_causal_lm, load_model_config
from ._dtype import DTYPE_NAMES, resolve_dtype
from ._tokenizer import load_tokenizer

__all__ = [
    "DTYPE_NAMES",
    "AutoModelForCausalLM",
    "check_causal_lm",
    "load_model_config",
    "load_tokenizer",
    "resolve_dtype",
]
