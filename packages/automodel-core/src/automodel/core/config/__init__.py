"""Config system: YAML with `_target_` objects, command-line overrides, env interpolation, validation.

```python
from automodel.core.config import load_config, instantiate

cfg = load_config("config.yaml", ["--optimizer.lr", "1e-4"])
optimizer = instantiate(cfg.optimizer, params=model.parameters())
```
"""

from ._entry import RecipeArgs, parse_recipe_argv, recipe_main
from ._errors import ConfigError, Problem, UserError
from ._load import load_config, save_config
from ._nemo_compat import NOT_SUPPORTED as NEMO_NOT_SUPPORTED
from ._nemo_compat import TARGET_ALIASES as NEMO_TARGET_ALIASES
from ._nemo_compat import migrate as migrate_nemo_config
from ._node import ConfigNode
from ._overrides import Override, apply_overrides, parse_overrides
from ._redact import REDACTED, is_secret_key, redacted_data
from ._targets import TargetError, build_value, instantiate, resolve_target
from ._trust import DEFAULT_ALLOWED_TARGETS, REFUSED_TARGETS
from ._validate import Section, validate_config
from ._yaml import parse_value

__all__ = [
    "DEFAULT_ALLOWED_TARGETS",
    "NEMO_NOT_SUPPORTED",
    "NEMO_TARGET_ALIASES",
    "REDACTED",
    "REFUSED_TARGETS",
    "ConfigError",
    "ConfigNode",
    "Override",
    "Problem",
    "RecipeArgs",
    "Section",
    "TargetError",
    "UserError",
    "apply_overrides",
    "build_value",
    "instantiate",
    "is_secret_key",
    "load_config",
    "migrate_nemo_config",
    "parse_overrides",
    "parse_recipe_argv",
    "parse_value",
    "recipe_main",
    "redacted_data",
    "resolve_target",
    "save_config",
    "validate_config",
]
