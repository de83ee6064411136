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
        ("TrainBiEncoderRecipe", ("finetune", "bi_encoder")),
        (
            "{_target_: nemo_automodel.recipes.retrieval.train_cross_encoder.TrainCrossEncoderRecipe}",
            ("finetune", "cross_encoder"),
        ),
        ("MineHardNegativesRecipe", ("mine", "hard_negatives")),
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
    path.write_text("recipe: FinetuneRecipeForVLMX\n")
    with pytest.raises(UsageError, match="has no equivalent here"):
        route(str(path))


THEIR_SLURM = """\
recipe: TrainFinetuneRecipeForNextTokenPrediction
slurm:
  job_name: llama-squad
  nodes: 2
  ntasks_per_node: 8
  time: "04:00:00"
  container_image: nvcr.io/nvidia/nemo:dev
  hf_home: /lustre/hf
  hf_token: hf_SECRET
  wandb_key: ${MY_WANDB}
  env_vars: {NCCL_DEBUG: WARN}
  extra_mounts: [/lustre:/lustre]
  nemo_mount: {source: /code, dest: /opt/code}
  job_dir: RUN_DIR
"""


def test_their_slurm_section(tmp_path: Path) -> None:
    """Their SLURM keys in ours; secrets reach sbatch's environment by name, not the script."""
    from automodel.cli._slurm_script import render_script
    from automodel.cli._slurm_validate import load_job

    path = tmp_path / "cfg.yaml"
    path.write_text(THEIR_SLURM.replace("RUN_DIR", str(tmp_path / "run")))
    environ = {"MY_WANDB": "wb_SECRET", "PATH": ""}
    job = load_job(str(path), [], None, "finetune", "llm", environ=environ)
    assert job is not None
    assert (job.nodes, job.gpus_per_node, job.run_dir) == (2, 8, tmp_path / "run")
    assert job.env == (("NCCL_DEBUG", "WARN"), ("HF_HOME", "/lustre/hf"))
    assert job.container_mounts == ("/lustre:/lustre", "/code:/opt/code")
    assert environ["HF_TOKEN"] == "hf_SECRET" and environ["WANDB_API_KEY"] == "wb_SECRET"
    script = render_script(job, environ)
    assert "SECRET" not in script
    assert "--export=ALL,HF_TOKEN,WANDB_API_KEY" in " ".join(job.sbatch_command(environ))
    path.write_text(THEIR_SLURM.replace("RUN_DIR", str(tmp_path)) + "  command: echo hi\n")
    with pytest.raises(UsageError, match=r"slurm\.command is not supported here"):
        load_job(str(path), [], None, "finetune", "llm", environ={"MY_WANDB": "x"})
