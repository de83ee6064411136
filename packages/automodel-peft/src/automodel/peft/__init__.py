"""LoRA, DoRA and QLoRA for any PyTorch module (and LoRA on stacked MoE expert weights), saved
and loaded in the Hugging Face PEFT format."""

from ._adapter_io import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_KEY_PREFIX,
    ADAPTER_WEIGHTS_NAME,
    AdapterError,
    adapter_config,
    load_adapter,
    read_adapter_config,
    save_adapter,
    write_adapter_config,
)
from ._apply import (
    LoraSummary,
    apply_lora,
    lora_disabled,
    lora_modules,
    lora_parameters,
    lora_state_dict,
    lora_summary,
    merge_lora,
    unload_lora,
    unmerge_lora,
)
from ._config import LoraConfig, LoraConfigError, pattern_key
from ._export import merged_state_dict
from ._lora_linear import LoraLinear
from ._stacked import StackedLora

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_KEY_PREFIX",
    "ADAPTER_WEIGHTS_NAME",
    "AdapterError",
    "LoraConfig",
    "LoraConfigError",
    "LoraLinear",
    "LoraSummary",
    "StackedLora",
    "adapter_config",
    "apply_lora",
    "load_adapter",
    "lora_disabled",
    "lora_modules",
    "lora_parameters",
    "lora_state_dict",
    "lora_summary",
    "merge_lora",
    "merged_state_dict",
    "pattern_key",
    "read_adapter_config",
    "save_adapter",
    "unload_lora",
    "unmerge_lora",
    "write_adapter_config",
]
