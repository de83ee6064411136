"""Multi-process launches: the torchrun command (dry run), a real 2-process run, signal forwarding."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CONFIG = "output:\n  dir: out\n"


def dry_run(run_cli, *args: str) -> tuple[dict[str, str | None], list[str]]:
    """Run with --dry-run; return the torchrun flags and the arguments each process gets."""
    result = run_cli("--dry-run", *args)  # first: a `--` in args ends the CLI's own flags
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    cmd = shlex.split(result.stdout)
    assert cmd[:3] == [sys.executable, "-m", "automodel.distributed._torchrun"]  # short errors
    split = cmd.index("automodel.cli")
    assert cmd[split - 1] == "-m"
    flags: dict[str, str | None] = {}
    head = cmd[3 : split - 1]
    while head:
        flag = head.pop(0)
        flags[flag] = None if flag == "--standalone" else head.pop(0)
    return flags, cmd[split + 1 :]


@pytest.fixture
def config(write_config):
    return str(write_config(CONFIG))


def test_single_node_uses_a_standalone_rendezvous(run_cli, config):
    flags, child = dry_run(
        run_cli, "test", "dist", "--nproc-per-node", "4", "-c", config, "--a.b", "1", "--debug",
        "--trust-remote-code", "--allow-import", "mypkg",
    )  # fmt: skip
    assert flags == {"--nnodes": "1", "--nproc-per-node": "4", "--standalone": None}
    grants = ["--allow-import", "mypkg", "--trust-remote-code"]  # every process gets them
    assert child == ["test", "dist", "--debug", *grants, "-c", config, "--a.b", "1"]


def test_multi_node_static_rendezvous(run_cli, config):
    args = ["--nnodes", "2", "--nproc_per_node=8", "--node-rank", "1", "--master-addr", "node0"]
    flags, child = dry_run(run_cli, "test", "dist", "-c", config, *args, "--master-port", "29501")
    assert flags == {
        "--nnodes": "2",
        "--nproc-per-node": "8",
        "--node-rank": "1",
        "--master-addr": "node0",
        "--master-port": "29501",
    }
    assert child == ["test", "dist", "-c", config]


@pytest.mark.parametrize(("extra", "rdzv_id"), [([], "automodel"), (["--rdzv-id", "job7"], "job7")])
def test_multi_node_c10d_rendezvous(run_cli, config, extra, rdzv_id):
    args = ["--nnodes", "4", "--nproc-per-node", "8", "--rdzv-endpoint", "node0:29400", *extra]
    flags, child = dry_run(run_cli, "test", "dist", "-c", config, *args, "--x", "--", "--y")
    assert flags == {
        "--nnodes": "4",
        "--nproc-per-node": "8",
        "--rdzv-backend": "c10d",
        "--rdzv-endpoint": "node0:29400",
        "--rdzv-id": rdzv_id,
    }
    assert child == ["test", "dist", "-c", config, "--x", "--", "--y"]


def test_ipv6_endpoint_and_master_port_alone(run_cli, config):
    flags, _ = dry_run(run_cli, "test", "dist", "-c", config, "--rdzv-endpoint", "[::1]:29400")
    assert flags["--rdzv-endpoint"] == "[::1]:29400"
    flags, _ = dry_run(
        run_cli, "test", "dist", "-c", config, "--nproc-per-node", "2", "--master-port", "29511"
    )
    assert flags == {"--nnodes": "1", "--nproc-per-node": "2", "--master-port": "29511"}


def test_validate_never_launches(run_cli, config):
    result = run_cli("validate", "test", "dist", "-c", config, "--nproc-per-node", "2", "--dry-run")
    assert result.returncode == 0, result.stderr
    cmd = shlex.split(result.stdout)
    assert cmd == [sys.executable, "-m", "automodel.cli", "validate", "test", "dist", "-c", config]


def test_two_processes_all_reduce(run_cli, write_config, tmp_path):
    (tmp_path / "out").mkdir()
    config = write_config(CONFIG)
    args = ["test", "dist", "--nproc-per-node", "2", "-c", str(config), "--extra.key", "v"]
    result = run_cli(*args, timeout=300)
    assert result.returncode == 0, result.stderr
    records = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, record in enumerate(records):
        assert record["rank"] == rank
        assert record["world_size"] == 2
        assert record["sum"] == 0 + 1
        assert record["local_rank"] == str(rank)
        assert record["argv"] == ["-c", str(config), "--extra.key", "v"]  # no launch flags


def test_a_failed_process_ends_with_its_exit_code_and_one_line(run_cli, write_config, tmp_path):
    """A worker exiting 2 (a config error) makes the launch exit 2, without torchrun's dump."""
    config = write_config(CONFIG)
    env = {"AUTOMODEL_TEST_EXIT": "2", "AUTOMODEL_TEST_RECORD": str(tmp_path / "record.json")}
    args = ["test", "argv", "--nproc-per-node", "2", "-c", str(config)]
    result = run_cli(*args, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    summary = [line for line in result.stderr.splitlines() if line.startswith("automodel:")]
    # the rank that exits first fails with 2; torchrun may stop the other with SIGTERM first
    assert len(summary) == 1 and "process(es) failed: rank 0 (" in summary[0], summary
    assert "(exit code 2)" in summary[0] and "its own error is above" in summary[0]
    assert "ChildFailedError" not in result.stderr and "Traceback" not in result.stderr


def test_sigterm_is_forwarded_to_the_training_processes(cli_env, write_config, tmp_path):
    config = write_config(CONFIG)
    automodel = Path(sys.executable).with_name("automodel")
    proc = subprocess.Popen(
        [str(automodel), "test", "wait", "-c", str(config), "--nproc-per-node", "2"],
        env={**cli_env, "AUTOMODEL_TEST_OUT": str(tmp_path)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not all((tmp_path / f"ready{r}").exists() for r in (0, 1)):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    for rank in (0, 1):
        assert (tmp_path / f"signal{rank}").read_text() == "SIGTERM", output
    assert proc.returncode != 0  # torchrun reports that it was stopped by a signal
