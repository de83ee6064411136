"""Fixtures shared by every test folder: a real multi-process torchrun job, a tiny Llama config."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _shared import TINY_LLAMA


def install_into(target: Path, source: Path) -> Path:
    """`uv pip install --target target source` without dependencies: a distribution the tests
    put on PYTHONPATH, never into the project's virtual environment."""
    uv = [shutil.which("uv")] if shutil.which("uv") else [sys.executable, "-m", "uv"]
    cmd = [*uv, "pip", "install", "--python", sys.executable, "--target", str(target)]
    result = subprocess.run(
        [*cmd, "--no-deps", "--quiet", str(source)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return target


@pytest.fixture(name="install_into", scope="session")
def install_into_fixture() -> Callable[[Path, Path], Path]:
    """`install_into(target, source)`, for test modules."""
    return install_into


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(worker: Path, *args: str, nproc: int = 2, timeout: float = 300) -> str:
    """Run `worker` under torchrun on this machine (gloo on CPU); fail with its output tail;
    return its stdout."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        str(worker),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    tests_dir = str(Path(__file__).parent)  # workers import worker_cases from here
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tests_dir, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(name="run_torchrun", scope="session")
def run_torchrun_fixture() -> Callable[..., str]:
    """`run_torchrun(worker, *args, nproc=2, timeout=300)`, for test modules."""
    return run_torchrun


def worker_results(out: Path, nproc: int = 2) -> dict[int, dict]:
    """The `rank<r>.json` files a torchrun worker wrote into `out`, by rank."""
    import json

    return {r: json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)}


def worker_case(results: dict[int, dict], rank: int, name: str) -> dict:
    """One named check of one rank's results; fails with the worker's traceback if it raised."""
    result = results[rank][name]
    assert "error" not in result, result.get("error")
    return result


@pytest.fixture(name="worker_results", scope="session")
def worker_results_fixture() -> Callable[..., dict[int, dict]]:
    """`worker_results(out, nproc=2)`: per-rank JSON results of a torchrun worker."""
    return worker_results


@pytest.fixture(name="worker_case", scope="session")
def worker_case_fixture() -> Callable[[dict[int, dict], int, str], dict]:
    """`worker_case(results, rank, name)`: one check's result, its error shown if it failed."""
    return worker_case


@pytest.fixture(name="tiny_llama_config", scope="session")
def tiny_llama_config_fixture() -> Callable[..., Any]:
    """`tiny_llama_config(**overrides)`: the small LlamaConfig the unit tests share."""
    from transformers import LlamaConfig

    def make(**overrides: Any) -> Any:
        return LlamaConfig(**{**TINY_LLAMA, **overrides})

    return make


@pytest.fixture
def single_rank_group(tmp_path: Path) -> Iterator[None]:
    """A one-process gloo group (so DTensor / FSDP2 / DDP work on CPU), torn down afterwards."""
    import torch

    dist = torch.distributed
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group already running")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


# Fixtures that start torchrun jobs: a test that uses one (directly or through another
# fixture) starts several training processes, and is `slow`.
_LAUNCHERS = {"run_torchrun", "pooled_layouts", "run_once_per_layout"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark multi-process tests `slow`, so `uv run pytest -m "not slow"` is a quick loop."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        torchrun_cli = "run_cli" in names and "recipes" in item.path.parts  # nproc >= 1
        if names & _LAUNCHERS or torchrun_cli:
            item.add_marker(pytest.mark.slow)
