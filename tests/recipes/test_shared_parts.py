"""The parts recipes share (automodel.recipes): a cheap import, public names, shutdown of any
number of models, and the standard section tables a recipe composes."""

from __future__ import annotations

import gc
import logging
import re
import subprocess
import sys
import weakref

import pytest
import torch
from _shared import REPO

import automodel.recipes as recipes

ASSETS = REPO / "examples/llm_finetune/assets"


def test_importing_the_package_imports_no_part_and_no_torch() -> None:
    code = (
        "import sys, automodel.recipes as r; "
        "assert 'torch' not in sys.modules, 'torch'; "
        "assert not [m for m in sys.modules if m.startswith('automodel.recipes.')], 'parts'; "
        "r.start_run; assert 'torch' in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_local_jsonl_run_imports_no_datasets_and_no_distributed_machinery() -> None:
    """Start-up: the LLM recipe module and a chat dataset from a local JSONL file load neither
    `datasets` (nor pandas / pyarrow) nor pipelining, which only some runs use."""
    code = (
        "import sys\n"
        "import automodel.recipes.llm.finetune\n"
        "from automodel.core.data import chat_dataset\n"
        "from automodel.core.models import load_tokenizer\n"
        f"tok = load_tokenizer({str(ASSETS / 'tiny_tokenizer')!r})\n"
        f"ds = chat_dataset(tok, {str(ASSETS / 'reverse_validation.jsonl')!r}, seq_length=64)\n"
        "assert len(ds) == 200, len(ds)\n"
        "heavy = ('datasets', 'pandas', 'pyarrow', 'torch.distributed.pipelining')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_every_public_name_resolves_and_unknown_ones_fail() -> None:
    for name in recipes.__all__:
        assert getattr(recipes, name) is not None, name
    assert set(recipes.__all__) <= set(dir(recipes))
    with pytest.raises(AttributeError, match="no attribute 'train_everything'"):
        recipes.train_everything  # noqa: B018


def test_shutdown_frees_every_model_its_holders_hold() -> None:
    """A student, a teacher and an optimizer held by a recipe object and a dict all go."""

    class Holder:
        pass

    holder, parts = Holder(), {}
    holder.model = torch.nn.Linear(4, 4)
    holder.optimizer = torch.optim.SGD(holder.model.parameters(), lr=0.1)
    parts["teacher"] = torch.nn.Linear(4, 4)
    alive = [weakref.ref(holder.model), weakref.ref(parts["teacher"])]
    recipes.shutdown(holder, parts)  # no process group: nothing to end
    gc.collect()
    assert [ref() for ref in alive] == [None, None]
    assert vars(holder) == {} and parts == {}


def test_run_then_shutdown_frees_the_holder_after_the_phases_and_after_a_failure() -> None:
    class Holder:
        pass

    holder, calls = Holder(), []
    holder.model = torch.nn.Linear(4, 4)
    recipes.run_then_shutdown(holder, lambda: calls.append("setup"), lambda: calls.append("run"))
    assert calls == ["setup", "run"] and vars(holder) == {}

    def fail() -> None:
        raise RuntimeError("boom")

    holder.model = torch.nn.Linear(4, 4)
    with pytest.raises(RuntimeError, match="boom"):
        recipes.run_then_shutdown(holder, fail, lambda: calls.append("never"))
    assert calls == ["setup", "run"] and vars(holder) == {}


def test_a_recipe_composes_its_sections_from_the_standard_tables() -> None:
    from automodel.recipes.llm import LM_SECTIONS, SECTIONS

    tables = (
        recipes.RUN_SECTIONS,
        recipes.MODEL_SECTIONS,
        recipes.OPTIMIZER_SECTIONS,
        recipes.CHECKPOINT_SECTIONS,
        recipes.LOADER_SECTIONS,
        LM_SECTIONS,
    )
    names = [name for table in tables for name in table]
    assert len(names) == len(set(names))  # no section in two tables
    assert set(SECTIONS) == set(names)  # finetune.llm reads exactly the standard ones
    assert recipes.Logging().run_dir is None  # each recipe names its own default run directory


def test_set_aside_outputs_moves_an_earlier_runs_files_and_deletes_nothing(tmp_path) -> None:
    (tmp_path / "training.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "trace_rank0.json").write_text("{}")
    (tmp_path / "benchmark.json").write_text("")  # empty: nothing to keep, stays
    moved = recipes.set_aside_outputs(tmp_path, ("training.jsonl", "benchmark.json", "profile"))
    assert moved is not None and moved.parent == tmp_path / "previous"
    assert (moved / "training.jsonl").read_text() == '{"step": 1}\n'
    assert (moved / "profile" / "trace_rank0.json").is_file()
    assert not (tmp_path / "training.jsonl").exists() and not (tmp_path / "profile").exists()
    again = recipes.set_aside_outputs(tmp_path, ("training.jsonl", "profile"))
    assert again is None  # nothing left of an earlier run


def test_a_run_shorter_than_its_warmup_warms_up_over_its_length(caplog) -> None:
    from _shared import SFT

    from automodel.core.config import load_config

    cfg = load_config(SFT, ["--step_scheduler.max_steps=5"])  # the file warms up for 20
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    with caplog.at_level("WARNING", logger="automodel.recipes"):
        scheduler = recipes.build_scheduler(cfg, optimizer, total_steps=5)
    assert "warmup_steps (20) exceeds this run's 5 steps" in caplog.text
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])  # the LR this step uses
        optimizer.step()
        scheduler.step()
    assert lrs == sorted(set(lrs)) and lrs[-1] < 3e-3  # rising through the whole run


def test_upstream_deprecation_notices_stay_out_of_the_console_unless_debug() -> None:
    from _shared import SFT

    from automodel.core.logging import UPSTREAM_NOISE, quiet_upstream_noise

    command = [sys.executable, "-m", "automodel.cli", "validate", "finetune", "llm", "-c", str(SFT)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0 and "config OK" in result.stdout, result.stderr
    assert "register_constant" not in result.stderr
    assert not re.search(r"^W\d{4} ", result.stderr, re.M)  # torch's own warning lines
    quiet_upstream_noise(debug=True)
    assert all(logging.getLogger(n).level == logging.NOTSET for n in UPSTREAM_NOISE)
    quiet_upstream_noise()
    assert all(logging.getLogger(n).level == logging.ERROR for n in UPSTREAM_NOISE)
