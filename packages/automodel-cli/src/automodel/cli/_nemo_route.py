"""`automodel CFG.yaml [launch options] [overrides]`: NeMo AutoModel's command line.

The config's `recipe:` key (a class name, or `{_target_: ...}` ending in one) names the recipe.
`RECIPES` is the CLI's copy of automodel.core.config._nemo_compat.RECIPES (the CLI may not import
core); tests/cli/test_nemo_route.py asserts they are equal, so change them together.
"""

from __future__ import annotations

from pathlib import Path

from automodel.cli._errors import UsageError

RECIPES = {
    "TrainFinetuneRecipeForNextTokenPrediction": "finetune.llm",
    "FinetuneRecipeForNextTokenPrediction": "finetune.llm",
    "KnowledgeDistillationRecipeForNextTokenPrediction": "kd.llm",
    "BenchmarkingRecipeForNextTokenPrediction": "benchmark.llm",
}


def is_config_path(word: str) -> bool:
    """A bare `*.yaml` / `*.yml` word where a command would be."""
    return word.endswith((".yaml", ".yml"))


def route(config: str) -> tuple[str, str]:
    """(command, domain) of the recipe the config's `recipe:` key names."""
    import yaml

    from automodel.cli._yaml import Loader

    path = Path(config)
    if not path.is_file():
        raise UsageError(f"config file {config!r} does not exist.")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
    except yaml.YAMLError as e:
        raise UsageError(f"{config} is not valid YAML: {e}") from None
    value = data.get("recipe") if isinstance(data, dict) else None
    if value is None:
        raise UsageError(
            f"`automodel {config}` runs the recipe its recipe: key names (NeMo AutoModel "
            f"style), and {config} has none. Name the recipe: automodel finetune llm -c {config}."
        )
    name = value.get("_target_") if isinstance(value, dict) else value
    cls = str(name).rsplit(".", 1)[-1]
    if cls not in RECIPES:
        known = ", ".join(RECIPES)
        raise UsageError(
            f"{config}: recipe {name!r} has no equivalent here (known: {known}); name a recipe "
            f"instead: automodel <command> <domain> -c {config} (see `automodel list`)."
        )
    command, domain = RECIPES[cls].split(".")
    return command, domain
