"""The SLURM job a config's `slurm:` section describes, and the names its files get."""

# SLURM launch: read the config's `slurm:` section, write an sbatch script, submit it.
#
# With a `slurm:` section, `automodel <command> <domain> -c CONFIG [overrides]` copies CONFIG
# into the run directory (`slurm_config.yaml`), writes `slurm_job.sh` next to it and runs
# `sbatch` on it. In the job, `srun` starts one torchrun per node with a c10d rendezvous on the
# first node, and every training process runs
# `python -m automodel.cli <command> <domain> --no-slurm -c <run_dir>/slurm_config.yaml [overrides]`.
# `--no-slurm` is what keeps the job from submitting itself again; recipes accept the section
# without reading it (`slurm` is a reserved top-level key of the config, like `allowed_imports`).
#
# Secrets never reach the script: the variables in SECRET_ENV (when set) and those listed under
# `forward_env` are passed by name with `sbatch --export=ALL,NAME,...`, so the job gets their
# values from the environment sbatch was run in; `env:` entries whose names look like secrets
# are refused.

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SECTION = "slurm"
SCRIPT_NAME = "slurm_job.sh"
CONFIG_NAME = "slurm_config.yaml"
LOG_NAME = "slurm-%j.out"
DEFAULT_MASTER_PORT = 29500
# Forwarded by name whenever they are set where sbatch runs; never written into the script.
SECRET_ENV = (
    "HF_TOKEN",
    "HF_HUB_TOKEN",
    "WANDB_API_KEY",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
)
KEYS = (
    "job_name",
    "nodes",
    "gpus_per_node",
    "ntasks_per_node",
    "cpus_per_task",
    "time",
    "account",
    "partition",
    "qos",
    "container_image",
    "container_mounts",
    "env",
    "forward_env",
    "extra_sbatch_lines",
    "run_dir",
    "master_port",
    "python",
)


@dataclass(frozen=True)
class SlurmJob:
    """A validated `slurm:` section, plus what the job runs."""

    config: str  # the config file as given with -c
    command: str
    domain: str
    job_name: str
    nodes: int
    gpus_per_node: int
    run_dir: Path  # absolute
    ntasks_per_node: int = 1
    cpus_per_task: int | None = None
    time: str | None = None
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    container_image: str | None = None
    container_mounts: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    forward_env: tuple[str, ...] = ()
    extra_sbatch_lines: tuple[str, ...] = ()
    master_port: int = DEFAULT_MASTER_PORT
    python: str | None = None
    overrides: tuple[str, ...] = ()  # for the recipe: the command line's minus `slurm` ones
    after_separator: tuple[str, ...] | None = None
    flags: tuple[str, ...] = ()  # the recipe's protocol flags: --debug and the grants

    @property
    def world_size(self) -> int:
        """The processes the job starts: torchrun runs one per GPU on every node."""
        return self.nodes * self.gpus_per_node

    @property
    def script(self) -> Path:
        return self.run_dir / SCRIPT_NAME

    @property
    def snapshot(self) -> Path:
        return self.run_dir / CONFIG_NAME

    def recipe_overrides(self) -> list[str]:
        """The overrides the recipe gets (slurm ones are the CLI's), including those after `--`."""
        return [*self.overrides, *(self.after_separator or ())]

    def child_args(self) -> list[str]:
        """What each training process gives `python -m automodel.cli` inside the job."""
        args = [self.command, self.domain, "--no-slurm", *self.flags]
        args += ["-c", str(self.snapshot), *self.overrides]
        if self.after_separator is not None:
            args += ["--", *self.after_separator]
        return args

    def forwarded(self, environ: Mapping[str, str]) -> list[str]:
        """Names passed with `sbatch --export`: forward_env, then the secrets that are set."""
        names = list(self.forward_env)
        names += [n for n in SECRET_ENV if n in environ and n not in names]
        return names

    def sbatch_command(self, environ: Mapping[str, str]) -> list[str]:
        names = self.forwarded(environ)
        export = [f"--export=ALL,{','.join(names)}"] if names else []
        return ["sbatch", *export, str(self.script)]
