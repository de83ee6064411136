"""SLURM launch from a config's `slurm:` section: the sbatch script, submitting it, its errors.

`sbatch`, `srun` and `scontrol` are small fakes put first on PATH: they record what they were
given (`sbatch` also prints `Submitted batch job 12345`), so no SLURM installation is needed.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _shared import REPO, SFT, TIMING

SECRET = "hf_secret_value_do_not_write"
CONFIG = """\
output:
  dir: out
slurm:
  job_name: sft-test
  nodes: 2
  gpus_per_node: 8
  ntasks_per_node: 1
  cpus_per_task: 16
  time: 4:00:00
  account: my-account
  partition: batch
  qos: normal
  container_image: nvcr.io/nvidia/pytorch:24.07-py3
  container_mounts: [/lustre:/lustre, /home]
  env:
    NCCL_DEBUG: INFO
    SPACED: a value with 'quotes' and $dollars
  forward_env: [MY_SETTING]
  extra_sbatch_lines:
    - "#SBATCH --signal=USR1@120"
  master_port: 29511
"""
OVERRIDES = ["--a.b", "x y", "--c=it's", "--neg", "-1", "--", "--after", "$HOME"]

FAKE_SBATCH = """\
import json, os, sys
script = sys.argv[-1]
record = {
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "env": {k: os.environ.get(k) for k in ("HF_TOKEN", "MY_SETTING")},
    "script": open(script).read() if os.path.isfile(script) else None,
}
with open(os.path.join(os.path.dirname(sys.argv[0]), "sbatch.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\\n")
if os.environ.get("FAKE_SBATCH_EXIT"):
    print("sbatch: error: Invalid account or account/partition combination", file=sys.stderr)
    sys.exit(int(os.environ["FAKE_SBATCH_EXIT"]))
print("Submitted batch job 12345")
"""
FAKE_SRUN = """\
import json, os, sys
args = sys.argv[1:]
record = {"argv": args, "cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in
          ("NCCL_DEBUG", "SPACED", "HF_TOKEN")}}
with open(os.path.join(os.path.dirname(sys.argv[0]), "srun.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\\n")
if os.environ.get("FAKE_SRUN_EXEC"):  # run the command once, as on a one-node allocation
    while args[0].startswith("--"):
        args.pop(0)
    os.execvp(args[0], args)
"""
FAKE_SCONTROL = """\
import os, sys
assert sys.argv[1:3] == ["show", "hostnames"], sys.argv
print("\\n".join(os.environ["FAKE_NODES"].split(",")))
"""


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A directory with fake sbatch, srun and scontrol executables."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
    return bin_dir


@pytest.fixture
def slurm_env(fake_bin: Path) -> dict[str, str]:
    return {"PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", "MY_SETTING": "forwarded"}


def calls(fake_bin: Path, name: str) -> list[dict]:
    path = fake_bin / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def sbatch_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def assert_user_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("automodel: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_dry_run_prints_the_script_and_submits_nothing(run_cli, write_config, slurm_env, tmp_path):
    config = write_config(CONFIG)
    env = {**slurm_env, "HF_TOKEN": SECRET}
    result = run_cli("test", "argv", "-c", str(config), "--dry-run", *OVERRIDES, env=env)
    assert result.returncode == 0, result.stderr
    script = result.stdout
    run_dir = tmp_path / "runs" / "sft-test"
    assert script.startswith("#!/bin/bash\n")
    assert sbatch_lines(script) == [
        "#SBATCH --job-name=sft-test",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --time=4:00:00",  # as written, not YAML 1.1's base-60 integer 14400
        "#SBATCH --account=my-account",
        "#SBATCH --partition=batch",
        "#SBATCH --qos=normal",
        f"#SBATCH --output={run_dir}/slurm-%j.out",
        "#SBATCH --signal=USR1@120",
    ]
    assert "set -euo pipefail\n" in script
    assert 'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)' in script
    assert "--rdzv-backend c10d" in script and "--nproc-per-node 8" in script
    assert SECRET not in script
    assert "sbatch --export=ALL,MY_SETTING,HF_TOKEN" in script  # names only, in a comment
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert "dry run: nothing written or submitted" in result.stderr
    assert calls(Path(slurm_env["PATH"].split(os.pathsep)[0]), "sbatch") == []
    assert not (tmp_path / "runs").exists()


def test_submit_writes_the_script_and_a_config_copy_and_runs_sbatch(
    run_cli, write_config, slurm_env, fake_bin, tmp_path
):
    config = write_config(CONFIG)
    env = {**slurm_env, "HF_TOKEN": SECRET}
    result = run_cli("test", "argv", "-c", "config.yaml", *OVERRIDES, env=env)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "sft-test"
    script_path = run_dir / "slurm_job.sh"
    assert result.stdout.splitlines()[0] == "Submitted batch job 12345"
    assert str(run_dir / "slurm-12345.out") in result.stdout
    [call] = calls(fake_bin, "sbatch")
    assert call["argv"] == ["--export=ALL,MY_SETTING,HF_TOKEN", str(script_path)]
    assert call["env"] == {"HF_TOKEN": SECRET, "MY_SETTING": "forwarded"}  # sbatch passes them
    assert call["script"] == script_path.read_text()
    assert SECRET not in call["script"] and "forwarded" not in call["script"]
    assert (run_dir / "slurm_config.yaml").read_bytes() == config.read_bytes()
    assert subprocess.run(["bash", "-n", str(script_path)]).returncode == 0


def test_the_script_runs_one_torchrun_per_node_with_the_same_recipe_and_overrides(
    run_cli, write_config, slurm_env, fake_bin, tmp_path, cli_env
):
    write_config(CONFIG)
    result = run_cli("test", "argv", "-c", "config.yaml", *OVERRIDES, env=slurm_env)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "sft-test"
    job_env = {
        **cli_env,
        **slurm_env,
        "HF_TOKEN": SECRET,  # what sbatch --export would hand the job
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "12345",
        "FAKE_NODES": "node1,node2",
    }
    job = subprocess.run(
        ["bash", str(run_dir / "slurm_job.sh")],
        env=job_env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert job.returncode == 0, job.stderr
    assert "rendezvous at node1:29511" in job.stdout
    [srun] = calls(fake_bin, "srun")
    assert srun["cwd"] == str(tmp_path)  # relative paths in the config mean what they meant
    assert srun["env"] == {
        "NCCL_DEBUG": "INFO",
        "SPACED": "a value with 'quotes' and $dollars",
        "HF_TOKEN": SECRET,
    }
    assert srun["argv"] == [
        *["--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"],
        "--cpus-per-task=16",
        "--container-image=nvcr.io/nvidia/pytorch:24.07-py3",
        "--container-mounts=/lustre:/lustre,/home",
        f"--container-workdir={tmp_path}",
        *["python", "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "8"],
        *["--rdzv-backend", "c10d", "--rdzv-endpoint", "node1:29511", "--rdzv-id", "12345"],
        *["-m", "automodel.cli", "test", "argv", "--no-slurm"],
        *["-c", str(run_dir / "slurm_config.yaml"), *OVERRIDES],
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_job_runs_the_recipe_and_does_not_submit_itself_again(
    run_cli, write_config, slurm_env, fake_bin, tmp_path, cli_env
):
    port = _free_port()
    write_config(f"slurm:\n  nodes: 1\n  gpus_per_node: 1\n  master_port: {port}\n")
    grants = ["--allow-import", "mypkg", "--trust-remote-code"]
    result = run_cli("test", "argv", "-c", "config.yaml", "--k", "v w", *grants, env=slurm_env)
    assert result.returncode == 0, result.stderr
    script = tmp_path / "runs" / "test-argv" / "slurm_job.sh"
    record = tmp_path / "record.json"
    job_env = {**cli_env, **slurm_env, "SLURM_JOB_NODELIST": "localhost", "SLURM_NNODES": "1"}
    job_env |= {"SLURM_JOB_ID": "7", "FAKE_NODES": "localhost", "FAKE_SRUN_EXEC": "1"}
    job_env["AUTOMODEL_TEST_RECORD"] = str(record)
    job = subprocess.run(
        ["bash", str(script)], env=job_env, capture_output=True, text=True, timeout=300
    )
    assert job.returncode == 0, job.stdout + job.stderr
    seen = json.loads(record.read_text())
    snapshot = str(tmp_path / "runs" / "test-argv" / "slurm_config.yaml")
    assert seen["argv"] == [*grants, "-c", snapshot, "--k", "v w"]  # the grants reach the job
    assert seen["env"]["RANK"] == "0" and seen["env"]["WORLD_SIZE"] == "1"
    assert len(calls(fake_bin, "sbatch")) == 1  # only the submission; the job ran the recipe


def test_missing_sbatch_is_a_clear_error(run_cli, write_config, tmp_path):
    write_config(CONFIG)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"PATH": str(empty), "MY_SETTING": "x"}
    result = run_cli("test", "argv", "-c", "config.yaml", env=env)
    assert_user_error(result, "`sbatch` is not on PATH", "SLURM login node", "--dry-run")
    assert not (tmp_path / "runs").exists()


def test_sbatch_failure_shows_its_error_and_exits_non_zero(
    run_cli, write_config, slurm_env, tmp_path
):
    write_config(CONFIG)
    result = run_cli(
        "test", "argv", "-c", "config.yaml", env={**slurm_env, "FAKE_SBATCH_EXIT": "1"}
    )
    assert result.returncode == 1
    assert "sbatch: error: Invalid account" in result.stderr
    assert "automodel: error: sbatch exited with status 1; nothing was submitted" in result.stderr
    assert "Submitted" not in result.stdout


def test_forward_env_must_be_set_to_submit(run_cli, write_config, slurm_env):
    write_config(CONFIG)
    env = {"PATH": slurm_env["PATH"]}  # MY_SETTING is not set
    result = run_cli("test", "argv", "-c", "config.yaml", env=env)
    assert_user_error(result, "slurm.forward_env: MY_SETTING is not set in this environment")
    result = run_cli("test", "argv", "-c", "config.yaml", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert "warning: slurm.forward_env: MY_SETTING is not set" in result.stderr


@pytest.mark.parametrize(
    ("slurm", "fragments"),
    [
        (
            "  gpus_per_node: 8\n  nodse: 2\n",
            ["config.yaml:5: slurm.nodse: unknown key", "did you mean 'slurm.nodes'?"],
        ),
        (
            "  gpus_per_node: 8\n  nodes: two\n",
            ["config.yaml:5: slurm.nodes: expects a positive integer, got 'two'"],
        ),
        ("  nodes: 2\n", ["config.yaml:3: slurm.gpus_per_node: required"]),
        ("  gpus_per_node: 8\n  time: soon\n", ["slurm.time: expects a SLURM time limit"]),
        ("  gpus_per_node: 8\n  master_port: 70000\n", ["slurm.master_port: expects a port"]),
        (
            "  gpus_per_node: 8\n  env:\n    HF_TOKEN: abc\n",
            ["config.yaml:6: slurm.env.HF_TOKEN: looks like a secret", "forward_env"],
        ),
        ("  gpus_per_node: 8\n  env: {MY_API_KEY: abc}\n", ["slurm.env.MY_API_KEY: looks like"]),
        ("  gpus_per_node: 8\n  env: {DB_PASSWORD: abc}\n", ["slurm.env.DB_PASSWORD: looks like"]),
        (
            "  gpus_per_node: 8\n  env: {TOKEN_HOLDER: '${WANDB_API_KEY}'}\n",
            ["refers to WANDB_API_KEY", "forward_env"],
        ),
        ("  gpus_per_node: 8\n  env: [A]\n", ["slurm.env: expects a mapping"]),
        ("  gpus_per_node: 8\n  forward_env: [BAD-NAME]\n", ["expects an environment variable"]),
        (
            "  gpus_per_node: 8\n  extra_sbatch_lines: ['--signal=USR1']\n",
            ["slurm.extra_sbatch_lines.0: expects one line starting with '#SBATCH '"],
        ),
        ("  gpus_per_node: 8\n  container_mounts: [/a:/a]\n", ["needs container_image"]),
        (
            "  gpus_per_node: 8\n  account: ${NO_SUCH_VARIABLE_X}\n",
            ["environment variable NO_SUCH_VARIABLE_X is not set"],
        ),
        ("  gpus_per_node: 8\n  job_name: has space\n", ["slurm.job_name: expects letters"]),
        ("  - 8\n", ["slurm: must be a mapping of SLURM settings"]),
    ],
)
def test_bad_slurm_keys_name_the_key_and_line(run_cli, write_config, slurm_env, slurm, fragments):
    write_config("output:\n  dir: out\nslurm:\n" + slurm)
    result = run_cli("test", "argv", "-c", "config.yaml", "--dry-run", env=slurm_env)
    assert_user_error(result, *fragments)
    assert result.stdout == ""


def test_several_problems_are_reported_together(run_cli, write_config, slurm_env):
    write_config("slurm:\n  nodes: 0\n  gpus_per_node: x\n  qos: [a]\n")
    result = run_cli("test", "argv", "-c", "config.yaml", "--dry-run", env=slurm_env)
    assert_user_error(result, "invalid slurm section (3 problems):")
    for fragment in (
        "config.yaml:2: slurm.nodes: expects a positive integer, got '0'",
        "config.yaml:3: slurm.gpus_per_node: expects a positive integer, got 'x'",
        "config.yaml:4: slurm.qos: expects a single value, got a list",
    ):
        assert fragment in result.stderr


def test_launch_flags_conflict_with_the_slurm_section(run_cli, write_config, slurm_env):
    write_config(CONFIG)
    for command in ([], ["validate"]):
        args = [*command, "test", "argv", "-c", "config.yaml", "--nproc-per-node", "2"]
        result = run_cli(*args, "--dry-run", env=slurm_env)
        assert_user_error(result, "--nproc-per-node cannot be used with the slurm: section")
    # --no-slurm ignores the section: an ordinary torchrun launch on this machine
    args = ["test", "argv", "-c", "config.yaml", "--nproc-per-node", "2", "--no-slurm"]
    result = run_cli(*args, "--dry-run", env=slurm_env)
    assert result.returncode == 0, result.stderr
    assert "automodel.distributed._torchrun" in result.stdout and "sbatch" not in result.stdout


def test_slurm_overrides_are_the_clis_and_not_passed_to_the_job(
    run_cli, write_config, slurm_env, tmp_path
):
    write_config(CONFIG)
    args = ["--slurm.nodes", "4", "--+slurm.run_dir=elsewhere", "--~slurm.time", "--x", "1"]
    args += ["--slurm.env.NCCL_DEBUG", "WARN", "--slurm.time_limit", "1"]
    result = run_cli("test", "argv", "-c", "config.yaml", "--dry-run", *args, env=slurm_env)
    assert_user_error(
        result,
        "command line (--slurm.time_limit=1): slurm.time_limit: not in the config; "
        "to add it write --+slurm.time_limit VALUE",
    )
    result = run_cli("test", "argv", "-c", "config.yaml", "--dry-run", *args[:-2], env=slurm_env)
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert "#SBATCH --nodes=4" in sbatch_lines(script)
    assert not any(line.startswith("#SBATCH --time") for line in sbatch_lines(script))
    assert f"#SBATCH --output={tmp_path}/elsewhere/slurm-%j.out" in sbatch_lines(script)
    assert "export NCCL_DEBUG=WARN" in script
    tail = shlex.split(script.rsplit("-m automodel.cli ", 1)[1])
    snapshot = f"{tmp_path}/elsewhere/slurm_config.yaml"
    assert tail == ["test", "argv", "--no-slurm", "-c", snapshot, "--x", "1"]  # no --slurm.*


def test_deleting_the_section_runs_here(run_cli, write_config, slurm_env, tmp_path):
    write_config(CONFIG)
    record = tmp_path / "record.json"
    env = {**slurm_env, "AUTOMODEL_TEST_RECORD": str(record)}
    result = run_cli("test", "argv", "-c", "config.yaml", "--~slurm", "--k", "v", env=env)
    assert result.returncode == 0, result.stderr
    # the recipe gets the deletion too (harmless: it ignores the section anyway)
    assert json.loads(record.read_text())["argv"] == ["-c", "config.yaml", "--~slurm", "--k", "v"]


@pytest.mark.parametrize(
    ("config", "extra", "run_dir"),
    [
        ("logging:\n  run_dir: out/from_logging\n", [], "out/from_logging"),
        ("logging:\n  run_dir: out/a\n", ["--logging.run_dir", "out/b"], "out/b"),
        ("logging:\n  run_dir: ${RUN_ROOT}/x\n", [], "root/x"),
        ("", [], "runs/test-argv"),  # no job_name: <command>-<domain>
    ],
)
def test_run_dir_follows_logging_run_dir(
    run_cli, write_config, slurm_env, tmp_path, config, extra, run_dir
):
    write_config(config + "slurm:\n  gpus_per_node: 2\n")
    env = {**slurm_env, "RUN_ROOT": "root"}
    result = run_cli("test", "argv", "-c", "config.yaml", "--dry-run", *extra, env=env)
    assert result.returncode == 0, result.stderr
    assert f"#SBATCH --output={tmp_path / run_dir}/slurm-%j.out" in result.stdout


def test_run_dir_that_depends_on_the_job_id_needs_slurm_run_dir(run_cli, write_config, slurm_env):
    write_config("logging:\n  run_dir: runs/${SLURM_JOB_ID,local}\nslurm:\n  gpus_per_node: 2\n")
    result = run_cli("test", "argv", "-c", "config.yaml", "--dry-run", env=slurm_env)
    assert_user_error(result, "config.yaml:2: logging.run_dir:", "set slurm.run_dir")


def test_validate_checks_the_section_and_the_recipe_accepts_it(run_cli, write_config, slurm_env):
    slurm = "slurm:\n  nodes: 2\n  gpus_per_node: 8\n"
    write_config("output:\n  path: seen.json\n" + slurm)
    args = ["validate", "test", "echo", "-c", "config.yaml", "--slurm.nodes", "3"]
    result = run_cli(*args, env=slurm_env, timeout=120)
    assert result.returncode == 0, result.stderr  # `slurm` is a reserved key for recipes
    assert "config OK" in result.stdout
    write_config("output:\n  path: seen.json\n" + slurm + "  nodez: 1\n")
    result = run_cli("validate", "test", "echo", "-c", "config.yaml", env=slurm_env)
    assert_user_error(result, "slurm.nodez: unknown key")


def test_validate_checks_the_config_as_the_slurm_job_would_run_it(
    run_cli, write_config, slurm_env, tmp_path
):
    """nodes × gpus_per_node processes: the world size the recipe's checks see."""
    write_config("slurm:\n  nodes: 2\n  gpus_per_node: 4\n")
    record = tmp_path / "record.json"
    env = {**slurm_env, "AUTOMODEL_TEST_RECORD": str(record)}
    result = run_cli("validate", "test", "argv", "-c", "config.yaml", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(record.read_text())["env"]["WORLD_SIZE"] == "8"


def test_a_containerised_job_does_not_need_the_recipe_installed_here(
    run_cli, write_config, slurm_env
):
    write_config("slurm:\n  gpus_per_node: 8\n  container_image: img:1\n")
    result = run_cli("finetune", "vlm2", "-c", "config.yaml", "--dry-run", env=slurm_env)
    assert result.returncode == 0, result.stderr
    assert "no recipe named 'finetune.vlm2' is installed here" in result.stderr
    assert "-m automodel.cli finetune vlm2 --no-slurm" in result.stdout
    write_config("slurm:\n  gpus_per_node: 8\n")
    result = run_cli("finetune", "vlm2", "-c", "config.yaml", "--dry-run", env=slurm_env)
    assert_user_error(result, "no recipe named 'finetune.vlm2' is installed")


def test_in_process_runs_without_a_slurm_section_are_unchanged(
    run_cli, write_config, slurm_env, fake_bin, tmp_path
):
    write_config("a: 1  # mentions slurm only in a comment\n")
    record = tmp_path / "record.json"
    env = {**slurm_env, "AUTOMODEL_TEST_RECORD": str(record)}
    result = run_cli("test", "argv", "-c", "config.yaml", "--k", "v", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(record.read_text())["argv"] == ["-c", "config.yaml", "--k", "v"]
    assert calls(fake_bin, "sbatch") == []


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _wait_until(condition, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _session_gone(leader: subprocess.Popen) -> bool:
    """Whether every process of the session `leader` started has ended (the leader reaped)."""
    leader.poll()  # a zombie leader would still count as a member
    try:
        os.killpg(leader.pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_a_requeued_job_continues_where_the_preempted_one_stopped(
    run_cli, slurm_env, fake_bin, tmp_path, cli_env, request
):
    """The generated script, run as SLURM would: SIGTERM to the whole job, then the same
    script again as the requeued job (SLURM_RESTART_COUNT=1) finishes the run exactly."""
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    assets = REPO / "examples/llm_finetune/assets"
    train.write_text("".join((assets / "reverse_train.jsonl").open().readlines()[:256]))
    val.write_text("".join((assets / "reverse_validation.jsonl").open().readlines()[:32]))
    config = SFT.read_text()
    config = config.replace("examples/llm_finetune/", f"{REPO}/examples/llm_finetune/")
    config += f"slurm:\n  nodes: 1\n  gpus_per_node: 1\n  master_port: {_free_port()}\n"
    (tmp_path / "sft.yaml").write_text(config)
    run_dir = tmp_path / "runs" / "job"
    overrides = [
        f"--dataset.path={train}", f"--validation_dataset.path={val}",
        "--step_scheduler.max_steps=40", "--step_scheduler.val_every_steps=10",
        "--step_scheduler.log_every_steps=1", "--lr_scheduler.warmup_steps=2",
        "--+logging.progress=false", f"--checkpoint.checkpoint_dir={run_dir}/checkpoints",
    ]  # fmt: skip
    reference = subprocess.Popen(  # the uninterrupted run, meanwhile: CI time
        [
            str(Path(sys.executable).with_name("automodel")), "finetune", "llm", "-c", "sft.yaml",
            "--no-slurm", *overrides, f"--logging.run_dir={tmp_path}/reference",
            f"--checkpoint.checkpoint_dir={tmp_path}/ref",
        ],
        env={**cli_env, **slurm_env}, cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    request.addfinalizer(reference.kill)  # a no-op once it has ended
    submit = run_cli(
        "finetune", "llm", "-c", "sft.yaml", *overrides, f"--logging.run_dir={run_dir}",
        env=slurm_env,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    job_env = {**cli_env, **slurm_env, "SLURM_JOB_NODELIST": "localhost", "SLURM_NNODES": "1"}
    job_env |= {"SLURM_JOB_ID": "7", "FAKE_NODES": "localhost", "FAKE_SRUN_EXEC": "1"}
    script = [str(run_dir / "slurm_job.sh")]
    job = subprocess.Popen(["bash", *script], env=job_env, start_new_session=True)
    try:
        _wait_until(lambda: len(_rows(run_dir / "training.jsonl")) >= 3, "training steps")
        os.killpg(job.pid, signal.SIGTERM)  # preemption: every process of the job gets it
        _wait_until(lambda: _session_gone(job), "the job to stop")
    finally:
        if not _session_gone(job):
            os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    stopped = _rows(run_dir / "training.jsonl")[-1]["step"]
    assert stopped < 40 and (run_dir / "checkpoints" / "LATEST").read_text().strip().endswith(
        f"_step_{stopped}"
    )
    requeued = subprocess.run(
        ["bash", *script], env={**job_env, "SLURM_RESTART_COUNT": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert f"at step {stopped}" in requeued.stderr  # resumed, not started over
    _, reference_err = reference.communicate(timeout=180)
    assert reference.returncode == 0, reference_err[-3000:]
    for name in ("training.jsonl", "validation.jsonl"):
        assert _rows(run_dir / name) == _rows(tmp_path / "reference" / name), name
    final = "epoch_4_step_40/model/model.safetensors"
    ours = (run_dir / "checkpoints" / final).read_bytes()
    assert ours == (tmp_path / "ref" / final).read_bytes()
    assert not (run_dir / "previous").exists()
