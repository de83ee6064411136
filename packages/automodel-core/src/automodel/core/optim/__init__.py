"""Optimizers and learning-rate schedulers.

```python
from automodel.core.optim import build_lr_scheduler, build_optimizer

optimizer = build_optimizer(model, cfg.optimizer)  # _target_: torch.optim.AdamW, lr, weight_decay
scheduler = build_lr_scheduler(optimizer, total_steps=1000, warmup_steps=50, style="cosine")
```
"""

from ._build import build_optimizer
from ._param_groups import param_groups
from ._schedule import STYLES, WarmupDecayLR, build_lr_scheduler, lr_at

__all__ = [
    "STYLES",
    "WarmupDecayLR",
    "build_lr_scheduler",
    "build_optimizer",
    "lr_at",
    "param_groups",
]
