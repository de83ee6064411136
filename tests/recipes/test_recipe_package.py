"""A recipe package outside the repository (examples/recipe_package), built on automodel.recipes'
shared parts: installed into a temporary target, found by `automodel list`, trained, resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _shared import REPO

PACKAGE = REPO / "examples/recipe_package"
CONFIG = PACKAGE / "tiny_zloss.yaml"
AUTOMODEL = Path(sys.executable).with_name("automodel")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, install_into) -> dict[str, str]:
    """The example package installed (without dependencies) into a temporary --target."""
    target = install_into(tmp_path_factory.mktemp("zloss_package"), PACKAGE)
    path = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def automodel(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The installed `automodel` script, run from the repository root."""
    return subprocess.run(
        [str(AUTOMODEL), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_the_cli_lists_the_third_party_recipe(env: dict[str, str]) -> None:
    listed = automodel(env, "list")
    assert listed.returncode == 0, listed.stderr
    line = next(row for row in listed.stdout.splitlines() if "zloss" in row)
    assert "llm" in line and "z-loss" in line


def test_it_trains_checkpoints_and_resumes_with_the_shared_parts(
    env: dict[str, str], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    short = [
        "--step_scheduler.max_steps=6",
        "--step_scheduler.ckpt_every_steps=3",
        "--step_scheduler.val_every_steps=3",
        f"--logging.run_dir={run_dir}",
        "--+logging.progress=false",
    ]
    first = automodel(env, "zloss", "llm", "-c", str(CONFIG), *short)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "training.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["loss"] < rows[0]["loss"]  # it learns
    assert len((run_dir / "validation.jsonl").read_text().splitlines()) == 3  # 0, 3, 6
    final = run_dir / "checkpoints" / "epoch_0_step_6" / "model"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(final)  # a plain Hugging Face model folder
    assert model.config.vocab_size == 64 and (final / "tokenizer_config.json").is_file()

    # Rerunning the command resumes: the run is complete, nothing is trained again.
    again = automodel(env, "zloss", "llm", "-c", str(CONFIG), *short)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "the run is complete at step 6" in again.stderr
    assert len((run_dir / "training.jsonl").read_text().splitlines()) == 6

    # Training on from the step-3 checkpoint gives the first run's steps 4-6 exactly.
    branch = automodel(
        env, "zloss", "llm", "-c", str(CONFIG), *short,
        f"--+checkpoint.restore_from={run_dir / 'checkpoints' / 'epoch_0_step_3'}",
    )  # fmt: skip
    assert branch.returncode == 0, branch.stderr[-3000:]
    resumed = [json.loads(line) for line in (run_dir / "training.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in rows]
    assert torch.cuda.is_available() or resumed[-1]["mfu"] is None


def test_its_own_section_is_validated(env, monkeypatch, capsys) -> None:
    """In this process (no second interpreter start): the installed package's own main."""
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(os.pathsep)[0])
    monkeypatch.chdir(REPO)
    from automodel_zloss.recipe import main

    assert main(["--validate-only", "-c", str(CONFIG)]) == 0
    assert main(["--validate-only", "-c", str(CONFIG), "--zloss.cofef=1"]) == 2
    err = capsys.readouterr().err
    assert "zloss.cofef" in err and "coeff" in err and "Traceback" not in err
