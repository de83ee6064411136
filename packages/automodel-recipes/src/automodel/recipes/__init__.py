"""End-to-end training recipes, and the parts they share, public for third-party recipes too.

Recipes are registered in the entry-point group `automodel.recipes` (`finetune.llm`,
`pretrain.llm`, `kd.llm`, `benchmark.llm`); each is one linear module that calls the parts
below in the open (docs/recipes.md; examples/recipe_package is a recipe package outside the
repository built on them). Importing this package is cheap: a part (and torch) is imported
when first used.

```python
from automodel.checkpoint import HF_WEIGHTS
from automodel.recipes import build_model, prepare_model, shard_model, start_run

run = start_run(cfg, default_run_dir="runs/mine", weights_format=HF_WEIGHTS)
model = prepare_model(build_model(cfg), run)  # moe -> peft -> freeze -> restored weights
placed = shard_model(model, run)  # FSDP2 / DDP / TP per `distributed:`, then torch.compile
```
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> private module that defines it
_PARTS = {
    # config sections: plain sections and the standard tables
    "RUN_SECTIONS": "_sections",
    "CHECKPOINT_SECTIONS": "_sections",
    "MODEL_SECTIONS": "_sections",
    "OPTIMIZER_SECTIONS": "_sections",
    "LOADER_SECTIONS": "_sections",
    "Checkpoint": "_sections",
    "ClipGradNorm": "_sections",
    "Compile": "_sections",
    "Distributed": "_sections",
    "Freeze": "_sections",
    "Logging": "_sections",
    "Moe": "_sections",
    "PackedSequence": "_sections",
    "document_rows": "_sections",
    "Rng": "_sections",
    "read_section": "_sections",
    # builders
    "build_model": "_builders",
    "build_loader": "_builders",
    "build_dataset_loaders": "_builders",
    "build_preprocessor": "_builders",
    "build_step_scheduler": "_builders",
    "build_scheduler": "_builders",
    "build_lora_config": "_peft",
    "read_moe": "_moe",
    "read_distributed": "_parallel",
    # run context
    "RunContext": "_run",
    "RunViews": "_run",
    "start_run": "_run",
    "preflight": "_run",
    "restore_training_state": "_run",
    "is_complete": "_run",
    "training_session": "_run",
    "checkpoint_if_due": "_run",
    "shutdown": "_run",
    "set_aside_outputs": "_run_history",
    "run_then_shutdown": "_run",
    "Parallel": "_parallel",
    "Telemetry": "_telemetry",
    # model infrastructure
    "prepare_model": "_model_setup",
    "shard_model": "_model_setup",
    "MoeStep": "_moe",
    # the step, validation and saving
    "OptimizerStep": "_step",
    "PendingStep": "_pending",
    "read_back": "_pending",
    "Nonfinite": "_sections",
    "build_training": "_step",
    "model_flops_per_token": "_step",
    "validate": "_step",
    "hf_extras_writer": "_checkpointing",
    "adapter_extras_writer": "_peft",
    "save_merged_model": "_peft",
}

__all__ = sorted(_PARTS)


def __getattr__(name: str) -> Any:
    """Import the part `name` on first use (PEP 562), so listing recipes stays cheap."""
    if name not in _PARTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PARTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PARTS])
