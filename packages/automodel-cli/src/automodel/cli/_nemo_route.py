"""`automodel CFG.yaml [launch options] [overrides]`: NeMo AutoModel's command line.

The config's `recipe:` key (a class name, or `{_target_: ...}` ending in one) names the recipe.
`RECIPES` is the CLI's copy of automodel.core.config._nemo_compat.RECIPES (the CLI may not import
core); tests/cli/test_nemo_route.py asserts they are equal, so change them together.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from automodel.cli._errors import UsageError

RECIPES = {
    "TrainFinetuneRecipeForNextTokenPrediction": "finetune.llm",
    "FinetuneRecipeForNextTokenPrediction": "finetune.llm",
    "KnowledgeDistillationRecipeForNextTokenPrediction": "kd.llm",
    "BenchmarkingRecipeForNextTokenPrediction": "benchmark.llm",
    "FinetuneRecipeForVLM": "finetune.vlm",  # runs once a finetune.vlm recipe is installed
    "TrainBiEncoderRecipe": "finetune.bi_encoder",
    "TrainCrossEncoderRecipe": "finetune.cross_encoder",
    "MineHardNegativesRecipe": "mine.hard_negatives",
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


# Their `slurm:` keys (NeMo AutoModel's SlurmConfig) -> ours; see docs/migrating.md.
SLURM_RENAMES = {"env_vars": "env", "extra_mounts": "container_mounts", "job_dir": "run_dir"}
SLURM_SECRETS = {"hf_token": "HF_TOKEN", "wandb_key": "WANDB_API_KEY"}
SLURM_REFUSED = {  # key: (the values we accept, what to do instead)
    "command": ((None, ""), "the job runs the recipe; drop command"),
    "chdir": ((None,), "paths in the config are relative to where you submit; drop chdir"),
    "nsys_enabled": ((None, False), "profile with extra_sbatch_lines or your own wrapper"),
}


def looks_like_nemo(data: dict[str, Any]) -> bool:
    """A NeMo AutoModel config: a `recipe:` key or a `nemo_automodel.*` target somewhere."""
    return "recipe" in data or "'nemo_automodel." in repr(data)


def translate_slurm(
    section: dict[str, Any],
    where: dict[str, str],
    raw: dict[str, str],
    environ: MutableMapping[str, str],
) -> tuple[dict[str, Any], list[str]]:
    """Their `slurm:` spelling in ours, and the problems. Their `hf_token` / `wandb_key` values
    go into `environ` (this process's environment) as HF_TOKEN / WANDB_API_KEY, which sbatch
    forwards by name: never written into the job script."""
    out = dict(section)
    problems: list[str] = []

    def at(key: str) -> str:
        return where.get(f"slurm.{key}", where.get("slurm", ""))

    def move(old: str, new: str) -> None:
        for table in (where, raw):
            prefix = f"slurm.{old}"
            for key in [k for k in table if k == prefix or k.startswith(prefix + ".")]:
                table[f"slurm.{new}{key[len(prefix) :]}"] = table[key]

    for old, new in SLURM_RENAMES.items():
        if old in out:
            if new in out:
                problems.append(f"{at(old)}: slurm.{old} and slurm.{new} both given; keep {new}")
                continue
            out[new] = out.pop(old)
            move(old, new)
    if "ntasks_per_node" in out and "gpus_per_node" not in out:  # theirs: one task per GPU
        out["gpus_per_node"] = out.pop("ntasks_per_node")
        move("ntasks_per_node", "gpus_per_node")
    mounts = out.get("container_mounts")
    if isinstance(mounts, list):
        out["container_mounts"] = [_mount(m) for m in mounts]
    if out.get("nemo_mount") is not None:
        out["container_mounts"] = [*(out.get("container_mounts") or []), _mount(out["nemo_mount"])]
    out.pop("nemo_mount", None)
    if out.get("hf_home") is not None:
        env = out.setdefault("env", {})
        if isinstance(env, dict):
            env.setdefault("HF_HOME", out["hf_home"])
            where.setdefault("slurm.env.HF_HOME", at("hf_home"))
    out.pop("hf_home", None)
    for key, name in SLURM_SECRETS.items():
        value = out.pop(key, None)
        if value in (None, ""):
            continue
        ref = re.fullmatch(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", str(value))
        if ref is not None:
            value = environ.get(ref.group(1))
            if value is None:
                problems.append(f"{at(key)}: slurm.{key} names ${ref.group(1)}, which is not set")
                continue
        environ[name] = str(value)  # forwarded by name (sbatch --export=ALL,NAME)
    for key, (accepted, instead) in SLURM_REFUSED.items():
        if key in out and out.pop(key) not in accepted:
            problems.append(f"{at(key)}: slurm.{key} is not supported here: {instead}")
    return out, problems


def _mount(value: Any) -> Any:
    """Their `{source: ..., dest: ...}` mount as `source:dest`."""
    if isinstance(value, dict) and {"source", "dest"} <= set(value):
        return f"{value['source']}:{value['dest']}"
    return value
