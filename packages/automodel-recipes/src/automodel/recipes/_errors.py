"""The recipes' one way to report a config problem at the key it is about."""

from __future__ import annotations

from automodel.core.config import ConfigError, ConfigNode, Problem


def config_problem(cfg: ConfigNode, key: str, message: str) -> ConfigError:
    """A ConfigError about `key`, naming where the config sets it (`file:line`).

    Code with no `cfg` at hand raises `ConfigError(Problem(key, message))`: the recipe entry
    point (`recipe_main`) adds the location of `key` before reporting it.
    """
    return ConfigError(Problem(key, message, cfg.where(key)))
