"""Writing the sbatch script for a SlurmJob and submitting it with sbatch."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from automodel.cli._errors import CliError, UsageError
from automodel.cli._slurm_job import LOG_NAME, SlurmJob

_JOB_ID = re.compile(r"Submitted batch job ([0-9]+)")


class SubmitError(CliError):
    """sbatch ran and refused the job; the exit status is sbatch's."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code or 1


def _comment(text: str) -> str:
    """One comment line, whatever a path in it contains."""
    return text.replace("\r", "?").replace("\n", "?")


def render_script(job: SlurmJob, environ: Mapping[str, str], *, cwd: Path | None = None) -> str:
    """The sbatch script for `job`, run from `cwd` (default: the current directory)."""
    q = shlex.quote
    cwd = Path.cwd() if cwd is None else cwd
    directives = [
        f"--job-name={job.job_name}",
        f"--nodes={job.nodes}",
        f"--ntasks-per-node={job.ntasks_per_node}",
        f"--gpus-per-node={job.gpus_per_node}",
    ]
    if job.cpus_per_task is not None:
        directives.append(f"--cpus-per-task={job.cpus_per_task}")
    for name in ("time", "account", "partition", "qos"):
        value = getattr(job, name)
        if value is not None:
            directives.append(f"--{name}={value}")
    directives.append(f"--output={job.run_dir / LOG_NAME}")
    forwarded = job.forwarded(environ)
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), *job.extra_sbatch_lines]
    source = os.path.abspath(job.config)
    lines += [
        _comment(f"# Written by `automodel {job.command} {job.domain}` from {source}."),
        f"# Submitted with: {shlex.join(job.sbatch_command(environ))}",
    ]
    if forwarded:
        lines.append(
            f"# Passed by name from the submitting environment, never written here: "
            f"{', '.join(forwarded)}"
        )
    lines += ["set -euo pipefail", "", f"cd {q(str(cwd))}"]
    lines += [f"export {name}={q(value)}" for name, value in job.env]
    port = job.master_port
    lines += [
        "# The first node hosts the rendezvous (sed reads every line: `head -n1` could stop",
        "# scontrol with SIGPIPE on a long node list, which pipefail turns into a failed job).",
        'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
        f'echo "automodel: job $SLURM_JOB_ID on $SLURM_NNODES node(s), '
        f'rendezvous at $HEAD_NODE:{port}"',
        "",
        "# One task per node; each runs torchrun, which starts the training processes.",
    ]
    srun = [
        'srun --nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1 '
        "--kill-on-bad-exit=1"
        + (
            f" --cpus-per-task={job.cpus_per_task * job.ntasks_per_node}"
            if job.cpus_per_task
            else ""
        )
    ]
    if job.container_image is not None:
        container = [f"--container-image={q(job.container_image)}"]
        if job.container_mounts:
            container.append(f"--container-mounts={q(','.join(job.container_mounts))}")
        container.append(f"--container-workdir={q(str(cwd))}")
        srun.append(" ".join(container))
    python = job.python or ("python" if job.container_image is not None else sys.executable)
    srun += [
        f"{q(python)} -m torch.distributed.run",
        f'--nnodes "$SLURM_NNODES" --nproc-per-node {job.gpus_per_node}',
        f'--rdzv-backend c10d --rdzv-endpoint "$HEAD_NODE:{port}" --rdzv-id "$SLURM_JOB_ID"',
        f"-m automodel.cli {shlex.join(job.child_args())}",
    ]
    lines.append(" \\\n    ".join(srun))
    return "\n".join(lines) + "\n"


def submit(job: SlurmJob, *, dry_run: bool, environ: Mapping[str, str] | None = None) -> int:
    """Print the script (dry run) or write it and the config copy, and run sbatch."""
    environ = os.environ if environ is None else environ
    command = job.sbatch_command(environ)
    script = render_script(job, environ)
    missing = [name for name in job.forward_env if name not in environ]
    unset = (
        f"slurm.forward_env: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set "
        "in this environment; export it before submitting (the job gets the value sbatch sees) "
        "or remove it from forward_env"
    )
    if dry_run:
        print(script, end="")
        if missing:
            print(f"automodel: warning: {unset}.", file=sys.stderr)
        print(
            f"automodel: dry run: nothing written or submitted; this would write {job.script} "
            f"and {job.snapshot} (a copy of {job.config}), then run: {shlex.join(command)}",
            file=sys.stderr,
        )
        return 0
    sbatch = shutil.which("sbatch", path=environ.get("PATH"))
    if sbatch is None:
        raise UsageError(
            "the config has a slurm: section but `sbatch` is not on PATH: submit from a SLURM "
            "login node, or add --dry-run to print the job script instead of submitting it."
        )
    if missing:
        raise UsageError(f"{unset}.")
    try:
        job.run_dir.mkdir(parents=True, exist_ok=True)
        source = Path(job.config)
        if not (job.snapshot.exists() and job.snapshot.samefile(source)):
            shutil.copyfile(source, job.snapshot)
        job.script.write_text(script, encoding="utf-8")
        job.script.chmod(0o755)
    except OSError as exc:
        raise UsageError(
            f"cannot write the job files into {job.run_dir}: {exc.strerror or exc}; "
            "set slurm.run_dir to a directory you can write to."
        ) from None
    result = subprocess.run([sbatch, *command[1:]], capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SubmitError(
            f"sbatch exited with status {result.returncode}; nothing was submitted. "
            f"The script it was given is {job.script}.",
            result.returncode,
        )
    sys.stderr.write(result.stderr)
    print(result.stdout.strip())
    match = _JOB_ID.search(result.stdout)
    log = job.run_dir / (LOG_NAME.replace("%j", match.group(1)) if match else LOG_NAME)
    print(f"automodel: job script {job.script}, config copy {job.snapshot}, output {log}")
    return 0
