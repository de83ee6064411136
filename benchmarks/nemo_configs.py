"""How many of NeMo AutoModel's example configs validate here, and why the others do not.

    uv run python benchmarks/nemo_configs.py PATH/TO/Automodel/examples/llm_finetune
    uv run python benchmarks/nemo_configs.py DIR --world-size 8 --top 30

Each `*.yaml` under DIR (recursively) is read as `automodel validate <their.yaml>` reads it:
routed to our recipe by its `recipe:` key, translated (docs/migrating.md), checked against
that recipe's sections, then by the recipe's pre-flight checks (layouts, batch arithmetic),
with `WORLD_SIZE` processes (the batch arithmetic and parallel sizes depend on it). Nothing is built or downloaded; `trust_remote_code` is allowed, since no code
runs. Prints the count per recipe and the most common problems, their quoted values
replaced by X so that alike problems count together.

Their configs come from a checkout of https://github.com/NVIDIA-NeMo/Automodel (`examples/`);
none ship here.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import io
import os
import re
from pathlib import Path

from automodel.core.config import ConfigError, UserError, load_config, validate_config
from automodel.core.config._nemo_compat import RECIPES
from automodel.core.config._yaml import load_yaml_file

_QUOTED = re.compile(r"'[^']*'")
# our recipe -> the module whose SECTIONS it validates against
MODULES = {
    "finetune.llm": "automodel.recipes.llm.finetune",
    "kd.llm": "automodel.recipes.llm.kd",
    "benchmark.llm": "automodel.recipes.llm.benchmark",
    "finetune.vlm": "automodel.recipes.vlm.finetune",
    "finetune.bi_encoder": "automodel.recipes.retrieval.bi_encoder",
    "finetune.cross_encoder": "automodel.recipes.retrieval.cross_encoder",
    "mine.hard_negatives": "automodel.recipes.retrieval.mine",
}


def recipe_of(path: Path) -> str:
    """Our recipe for their file: by `recipe:`; when it names none, by their retrieval model
    class or `mining:` section (their mining config has no `recipe:`), else finetune.llm."""
    data, _ = load_yaml_file(path)
    data = data if isinstance(data, dict) else {}
    value = data.get("recipe")
    name = value.get("_target_") if isinstance(value, dict) else value
    if name is None:
        model = data.get("model")
        target = str(model.get("_target_", "")) if isinstance(model, dict) else ""
        if "BiEncoder" in target:
            return "finetune.bi_encoder"
        if "CrossEncoder" in target:
            return "finetune.cross_encoder"
        if "mining" in data:
            return "mine.hard_negatives"
    return RECIPES.get(str(name).rsplit(".", 1)[-1], "finetune.llm")


def problems_of(path: Path, recipe: str) -> list[str]:
    """The problems `automodel validate` reports for the file (none: it validates)."""
    module = importlib.import_module(MODULES[recipe])
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the translation's notes
            cfg = load_config(path, sections=module.SECTIONS, trust_remote_code=True)
            validate_config(cfg, module.SECTIONS)
            module.check(cfg)
    except ConfigError as e:
        return [f"{p.key}: " + _QUOTED.sub("'X'", p.message)[:110] for p in e.problems]
    except UserError as e:  # e.g. a check that reads a Hub model's config (no network here)
        return [f"(pre-flight) {str(e).splitlines()[0][:110]}"]
    return []


def _validates_at_some_size(path: Path, recipe: str) -> bool:
    """Whether the config validates with 1, 2, 4, ... or 512 processes."""
    for size in (2**i for i in range(10)):
        os.environ["WORLD_SIZE"] = str(size)
        if not problems_of(path, recipe):
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a folder of their YAML configs")
    parser.add_argument(
        "--world-size",
        default="1",
        help="processes (WORLD_SIZE); `auto`: also try each config at 1, 2, 4, ... 512 "
        "processes and count it at the first that validates (the problems listed are at 8)",
    )
    parser.add_argument("--top", type=int, default=20, help="how many problems to list")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a pre-flight Hub read fails fast, no retries
    auto = args.world_size == "auto"
    valid, total = collections.Counter(), collections.Counter()
    sized: collections.Counter[str] = collections.Counter()  # validate at some world size
    problems: collections.Counter[str] = collections.Counter()
    for path in sorted(args.root.rglob("*.yaml")):
        recipe = recipe_of(path)
        if recipe not in MODULES:
            problems[f"recipe {recipe} is not installed here"] += 1
            total[recipe] += 1
            continue
        os.environ["WORLD_SIZE"] = "8" if auto else args.world_size
        found = problems_of(path, recipe)
        total[recipe] += 1
        valid[recipe] += not found
        problems.update(found)
        if auto and (not found or _validates_at_some_size(path, recipe)):
            sized[recipe] += 1
    for recipe in sorted(total):
        at = "8 processes" if auto else f"{args.world_size} process(es)"
        line = f"{recipe}: {valid[recipe]} of {total[recipe]} validate at {at}"
        print(line + (f"; {sized[recipe]} at the size each needs" if auto else ""))
    print(f"\nmost common problems (of {sum(problems.values())}):")
    for problem, count in problems.most_common(args.top):
        print(f"{count:4d}  {problem}")


if __name__ == "__main__":
    main()
