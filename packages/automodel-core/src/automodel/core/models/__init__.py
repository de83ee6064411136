"""Model loading: any Hugging Face causal LM or vision-language model from a checkpoint or a
config, and its tokenizer or processor.

```yaml
model:
  _target_: automodel.core.models.AutoModelForCausalLM.from_pretrained
  pretrained_model_name_or_path: Qwen/Qwen3-0.6B
  torch_dtype: bfloat16
```
"""

from ._auto_model import AutoModelForCausalLM, AutoModelForImageTextToText, HFAutoModel
from ._config import check_auto_class, check_causal_lm, load_model_config
from ._dtype import DTYPE_NAMES, resolve_dtype
from ._tokenizer import load_processor, load_tokenizer

__all__ = [
    "DTYPE_NAMES",
    "AutoModelForCausalLM",
    "AutoModelForImageTextToText",
    "HFAutoModel",
    "check_auto_class",
    "check_causal_lm",
    "load_model_config",
    "load_processor",
    "load_tokenizer",
    "resolve_dtype",
]
