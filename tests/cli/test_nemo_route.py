"""`automodel CFG.yaml` (NeMo AutoModel's command line) routes by the config's `recipe:` key."""

from __future__ import annotations

from pathlib import Path

import pytest

from automodel.cli._errors import UsageError
from automodel.cli._nemo_route import RECIPES, route


def test_the_cli_copy_of_the_recipe_table_matches_core() -> None:
    from automodel.core.config._nemo_compat import RECIPES as CORE_RECIPES

    assert RECIPES == CORE_RECIPES


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ("TrainFinetuneRecipeForNextTokenPrediction", ("finetune", "llm")),
        (
            "{_target_: nemo_automodel.recipes.llm.kd.KnowledgeDistillationRecipeForNextTokenPrediction}",
            ("kd", "llm"),
        ),
    ],
)
def test_route(tmp_path: Path, recipe: str, expected: tuple[str, str]) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(f"recipe: {recipe}\n")
    assert route(str(path)) == expected


def test_route_without_or_with_an_unknown_recipe(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("model: {}\n")
    with pytest.raises(UsageError, match=r"has none\. Name the recipe: automodel finetune llm"):
        route(str(path))
    path.write_text("recipe: FinetuneRecipeForVLM\n")
    with pytest.raises(UsageError, match="has no equivalent here"):
        route(str(path))
