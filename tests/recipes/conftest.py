"""Shared fixtures for the recipe tests: the repository as working directory, smaller data sets."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _shared import REPO, TIMING
from safetensors.torch import load_file

ASSETS = REPO / "examples/llm_finetune/assets"
AUTOMODEL = Path(sys.executable).with_name("automodel")
LAYOUTS_WORKER = Path(__file__).with_name("layouts_worker.py")


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    """Run from the repository root: the example configs use paths relative to it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        yield mp


def head_of_asset(name: str, dst: Path, lines: int, assets: Path = ASSETS) -> Path:
    """The first `lines` rows of an example dataset (in `assets`, default the LLM examples'),
    written to `dst`: a quicker start-up."""
    rows = (assets / name).read_text().splitlines(keepends=True)
    dst.write_text("".join(rows[:lines]))
    return dst


@pytest.fixture(name="head_of_asset", scope="session")
def head_of_asset_fixture() -> Callable[..., Path]:
    """`head_of_asset(name, dst, lines, assets=...)`, for test modules (conftest cannot be
    imported)."""
    return head_of_asset


def run_recipe(config: Path, overrides: list[str]) -> Any:
    """Load `config` with `overrides`, set the LLM recipe up and train it; return the recipe."""
    from automodel.core.config import load_config
    from automodel.recipes.llm import FinetuneRecipeForCausalLM
    from automodel.recipes.llm.finetune import SECTIONS

    recipe = FinetuneRecipeForCausalLM(load_config(config, overrides, sections=SECTIONS))
    recipe.setup()
    recipe.run_train_validation_loop()
    return recipe


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """A folder with `train.jsonl` (64 rows) and `val.jsonl` (8 rows) of the reverse task."""
    root = tmp_path_factory.mktemp("small_data")
    head_of_asset("reverse_train.jsonl", root / "train.jsonl", 64)
    head_of_asset("reverse_validation.jsonl", root / "val.jsonl", 8)
    return root


def short_run(run_dir: Path, data: Path, steps: int, every: int, *extra: str) -> list[str]:
    """Overrides of a short run on `data` (see small_data): global batch 8 (local 2), `steps`
    steps, validation and a checkpoint every `every` steps, a log line per step."""
    return [
        "--step_scheduler.global_batch_size=8",
        "--step_scheduler.local_batch_size=2",
        f"--step_scheduler.max_steps={steps}",
        f"--step_scheduler.val_every_steps={every}",
        f"--step_scheduler.ckpt_every_steps={every}",
        "--step_scheduler.log_every_steps=1",
        f"--dataset.path={data / 'train.jsonl'}",
        f"--validation_dataset.path={data / 'val.jsonl'}",
        f"--logging.run_dir={run_dir}",
        f"--checkpoint.checkpoint_dir={run_dir}/checkpoints",
        "--+logging.progress=false",
        "--lr_scheduler.warmup_steps=1",
        *extra,
    ]


def run_cli(
    config: Path,
    overrides: list[str],
    nproc: int = 2,
    fails: bool = False,
    recipe: tuple[str, str] = ("finetune", "llm"),
) -> str:
    """`automodel <recipe> -c config --nproc-per-node N` (a real torchrun job); its stderr.

    The job must succeed, or with `fails` exit non-zero."""
    command = [str(AUTOMODEL), *recipe, "-c", str(config), "--nproc-per-node", str(nproc)]
    result = subprocess.run(
        [*command, *overrides], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert (result.returncode != 0) == fails, result.stderr[-4000:]
    return result.stderr


def jsonl_rows(path: Path, drop_timing: bool = True) -> list[dict]:
    """The rows of a metrics JSONL file, without the wall-clock fields unless asked."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    if not drop_timing:
        return rows
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def assert_same_training(
    ours: Path,
    reference: Path,
    steps: range,
    every: int,
    weight_atol: float = 2e-5,
    weights: str = "model.safetensors",
) -> None:
    """Two runs of `short_run(..., every)` with the same batches trained alike over `steps`.

    Per-step losses, label counts, global grad norms and lr of `steps`, every validation and
    the final weights (`weights`: the file in the checkpoint's model folder). Adam divides by
    sqrt(v): near-zero gradients turn float rounding into ~1e-5 weight noise, hence
    `weight_atol`.
    """
    rows = {r["step"]: r for r in jsonl_rows(ours / "training.jsonl")}
    reference_rows = {r["step"]: r for r in jsonl_rows(reference / "training.jsonl")}
    assert sorted(rows) == sorted(reference_rows)  # rank 0 alone writes rows
    for step in steps:
        a, b = rows[step], reference_rows[step]
        assert a["num_label_tokens"] == b["num_label_tokens"], step  # counted over all ranks
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), step
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), step  # the global norm
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-6), step
    val, val_ref = jsonl_rows(ours / "validation.jsonl"), jsonl_rows(reference / "validation.jsonl")
    last = max(rows)
    assert [r["step"] for r in val] == list(range(0, last + 1, every))
    for a, b in zip(val, val_ref, strict=True):
        assert a["num_label_tokens"] == b["num_label_tokens"]  # every rank's shard
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    (final,) = (ours / "checkpoints").glob(f"epoch_*_step_{last}")  # packed rows: epochs pass
    weights_file = f"checkpoints/{final.name}/model/{weights}"
    ours_weights, reference_weights = (
        load_file(ours / weights_file),
        load_file(reference / weights_file),
    )
    assert ours_weights.keys() == reference_weights.keys()
    for name, tensor in ours_weights.items():
        torch.testing.assert_close(
            tensor,
            reference_weights[name],
            rtol=1e-4,
            atol=weight_atol,
            msg=lambda m, name=name: f"{name}: {m}",
        )


def resume_dir_from(source: Path, run_dir: Path, step: int) -> None:
    """A run dir as `source` was at `step` (epoch 0): its checkpoint and its logs (cut on resume)."""
    name = f"epoch_0_step_{step}"
    shutil.copytree(source / "checkpoints" / name, run_dir / "checkpoints" / name)
    for log in ("training.jsonl", "validation.jsonl"):
        shutil.copy(source / log, run_dir / log)


def run_once_per_layout(
    tmp_path_factory: pytest.TempPathFactory, prefix: str, launch: Callable[[Path, str], str]
) -> Callable[[str], tuple[Path, str]]:
    """`run(layout)`: (run dir, stderr) of `launch(run_dir, layout)`, launched once per layout."""
    runs: dict[str, tuple[Path, str]] = {}

    def run(layout: str) -> tuple[Path, str]:
        if layout not in runs:
            run_dir = tmp_path_factory.mktemp(f"{prefix}_{layout}")
            runs[layout] = run_dir, launch(run_dir, layout)
        return runs[layout]

    return run


def pooled_layouts(
    tmp_path_factory: pytest.TempPathFactory,
    prefix: str,
    config: Path,
    layouts: dict[str, tuple[int, list[str]]],
    overrides: Callable[..., list[str]],
    recipe: tuple[str, str] = ("finetune", "llm"),
    *,
    run_torchrun: Callable[..., str],
) -> Callable[[str], tuple[Path, str]]:
    """`run(layout)`: (run dir, stderr) of `recipe -c config` with `layouts[layout]`
    (processes, extra overrides) on top of `overrides(run_dir, ...)`, each run once.

    The layouts of one process count run in one torchrun launch (layouts_worker.py), in the
    order of `layouts`, each in a process group of its own; a layout's stderr is that of its
    ranks, rank 0's first. The first to be asked for launches its process count's layouts.
    """
    runs: dict[str, tuple[Path, str]] = {}
    failures: dict[str, str] = {}

    def launch(nproc: int) -> None:
        pool = [name for name, (n, _) in layouts.items() if n == nproc and name not in runs]
        out = tmp_path_factory.mktemp(f"{prefix}_{nproc}proc")
        run_dirs = {name: tmp_path_factory.mktemp(f"{prefix}_{name}") for name in pool}
        argvs = {
            name: ["-c", str(config), *overrides(run_dirs[name], *layouts[name][1])]
            for name in pool
        }
        spec = {"recipe": ".".join(recipe), "out": str(out), "runs": argvs}
        (out / "spec.json").write_text(json.dumps(spec))
        try:
            run_torchrun(LAYOUTS_WORKER, str(out / "spec.json"), nproc=nproc)
            error = ""
        except AssertionError as e:  # the failed run's log tail, or the launch's output
            error = str(e)
        for name in pool:
            exits = [out / f"{name}.rank{r}.exit" for r in range(nproc)]
            if all(f.exists() and f.read_text() == "0" for f in exits):
                logs = [out / f"{name}.rank{r}.log" for r in range(nproc)]
                runs[name] = run_dirs[name], "".join(log.read_text() for log in logs)
            else:
                failures[name] = error or f"run {name} did not finish"

    def run(layout: str) -> tuple[Path, str]:
        if layout not in runs and layout not in failures:
            launch(layouts[layout][0])
        assert layout in runs, failures[layout]
        return runs[layout]

    return run


@pytest.fixture(name="run_once_per_layout", scope="session")
def run_once_per_layout_fixture() -> Callable[..., Callable[[str], tuple[Path, str]]]:
    """`run_once_per_layout(tmp_path_factory, prefix, launch)`, for test modules."""
    return run_once_per_layout


@pytest.fixture(name="pooled_layouts", scope="session")
def pooled_layouts_fixture(run_torchrun) -> Callable[..., Callable[[str], tuple[Path, str]]]:
    """`pooled_layouts(tmp_path_factory, prefix, config, layouts, overrides, recipe=...)`, for
    test modules."""
    return functools.partial(pooled_layouts, run_torchrun=run_torchrun)


@pytest.fixture(name="assert_same_training", scope="session")
def assert_same_training_fixture() -> Callable[..., None]:
    """`assert_same_training(ours, reference, steps, every, weight_atol=2e-5)`."""
    return assert_same_training


@pytest.fixture(name="resume_dir_from", scope="session")
def resume_dir_from_fixture() -> Callable[[Path, Path, int], None]:
    """`resume_dir_from(source, run_dir, step)`, for test modules."""
    return resume_dir_from


@pytest.fixture(name="run_recipe", scope="session")
def run_recipe_fixture() -> Callable[[Path, list[str]], Any]:
    """`run_recipe(config, overrides)`, for test modules."""
    return run_recipe


@pytest.fixture(name="short_run", scope="session")
def short_run_fixture() -> Callable[..., list[str]]:
    """`short_run(run_dir, data, steps, every, *extra)`, for test modules."""
    return short_run


@pytest.fixture(name="run_cli", scope="session")
def run_cli_fixture() -> Callable[..., str]:
    """`run_cli(config, overrides, nproc=2)`, for test modules."""
    return run_cli


@pytest.fixture(name="jsonl_rows", scope="session")
def jsonl_rows_fixture() -> Callable[..., list[dict]]:
    """`jsonl_rows(path, drop_timing=True)`, for test modules."""
    return jsonl_rows
