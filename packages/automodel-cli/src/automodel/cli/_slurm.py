"""SLURM launch: read the config's `slurm:` section, write an sbatch script, submit it.

With a `slurm:` section, `automodel <command> <domain> -c CONFIG [overrides]` copies CONFIG
into the run directory (`slurm_config.yaml`), writes `slurm_job.sh` next to it and runs
`sbatch` on it. In the job, `srun` starts one torchrun per node with a c10d rendezvous on the
first node, and every training process runs
`python -m automodel.cli <command> <domain> --no-slurm -c <run_dir>/slurm_config.yaml [overrides]`.
`--no-slurm` is what keeps the job from submitting itself again; recipes accept the section
without reading it (`slurm` is a reserved top-level key of the config, like `allowed_imports`).

Secrets never reach the script: the variables in SECRET_ENV (when set) and those listed under
`forward_env` are passed by name with `sbatch --export=ALL,NAME,...`, so the job gets their
values from the environment sbatch was run in; `env:` entries whose names look like secrets
are refused.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automodel.cli._errors import CliError, UsageError

if TYPE_CHECKING:
    import yaml

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

_SECRET_NAME = re.compile(r"(?:^|_)(?:TOKEN|KEY|SECRET)$|PASSWORD|PASSWD", re.IGNORECASE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REF = re.compile(r"\$(\$?)\{([^{}]*)\}")  # the config's `${VAR}` / `${VAR,default}`
_DIGITS = re.compile(r"[0-9]+")
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TIME = re.compile(r"(?:[0-9]+-)?[0-9]+(?::[0-9]{1,2}){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)
_JOB_ID = re.compile(r"Submitted batch job ([0-9]+)")
_DOCS = "see the SLURM section of docs/cli.md"
_UNSET = object()


class SubmitError(CliError):
    """sbatch ran and refused the job; the exit status is sbatch's."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code or 1


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
    debug: bool = False

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
        args = [self.command, self.domain, "--no-slurm", *(["--debug"] if self.debug else [])]
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


# ---------------------------------------------------------------------------------------------
# Reading the section


@dataclass(frozen=True)
class _Override:
    op: str  # "set", "add" or "delete"
    key: str
    raw: str | None
    token: str


def split_overrides(tokens: list[str]) -> tuple[list[_Override], list[_Override], list[str]]:
    """Split overrides (the grammar of automodel.core.config) into slurm ones and the rest.

    Returns the `slurm` overrides, the others (parsed, to find logging.run_dir), and the
    tokens of the others in their order (what the recipe gets).
    """
    mine: list[_Override] = []
    others: list[_Override] = []
    rest: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--") or len(token) == 2:
            rest.append(token)  # the recipe reports it
            continue
        body = token[2:]
        op = {"+": "add", "~": "delete"}.get(body[0], "set")
        body = body[1:] if op != "set" else body
        key, eq, raw = body.partition("=")
        used = [token]
        value: str | None = raw if eq else None
        takes_value = op != "delete" and not eq and i < len(tokens)
        if takes_value and not (tokens[i].startswith("--") and len(tokens[i]) > 2):
            value = tokens[i]
            used.append(tokens[i])
            i += 1
        override = _Override(op, key, value, "=".join(used) if len(used) == 2 else token)
        if key == SECTION or key.startswith(SECTION + "."):
            mine.append(override)
        else:
            others.append(override)
            rest += used
    return mine, others, rest


def mentions_slurm(config: str, overrides: list[str]) -> bool:
    """Cheap check before parsing YAML: could this run have a slurm section at all?"""
    mine, _, _ = split_overrides(overrides)
    if mine:
        return True
    try:
        return SECTION in Path(config).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False  # the recipe reports an unreadable config


def load_job(
    config: str,
    overrides: list[str],
    after_separator: list[str] | None,
    command: str,
    domain: str,
    *,
    debug: bool = False,
    environ: Mapping[str, str] | None = None,
) -> SlurmJob | None:
    """The validated slurm section of `config` with `--slurm.*` overrides, or None without one."""
    environ = os.environ if environ is None else environ
    if not mentions_slurm(config, overrides):
        return None
    mine, others, rest = split_overrides(overrides)
    data, where, raw = _read_yaml(config)
    problems: list[str] = []
    root = {SECTION: copy.deepcopy(data[SECTION])} if SECTION in data else {}
    for override in mine:
        _apply(root, override, where, raw, problems)
    if problems:
        raise UsageError(_format(problems))
    if SECTION not in root:
        return None
    section_where = where.get(SECTION, config)
    section = root[SECTION]
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise UsageError(
            f"{section_where}: {SECTION}: must be a mapping of SLURM settings such as "
            f"`nodes: 2` and `gpus_per_node: 8`, got {_kind(section)} ({_DOCS})."
        )
    reader = _Reader(section, where, raw, section_where, environ)
    values = reader.read(f"{command}-{domain}", _logging_run_dir(data, others, where, raw))
    if reader.problems:
        raise UsageError(_format(reader.problems))
    return SlurmJob(
        config=config,
        command=command,
        domain=domain,
        overrides=tuple(rest),
        after_separator=None if after_separator is None else tuple(after_separator),
        debug=debug,
        **values,
    )


def _format(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"invalid slurm section: {problems[0]}."
    items = "".join(f"\n  - {p}" for p in problems)
    return f"invalid slurm section ({len(problems)} problems):{items}\n({_DOCS})"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list"}.get(type(value), f"{value!r}")


def _read_yaml(config: str) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The config's data, `file:line` of the slurm and logging keys, their plain scalars as written."""
    try:
        text = Path(config).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {config!r}: {exc}.") from None
    import yaml  # only runs with a slurm section read YAML in the CLI

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{config}:{mark.line + 1}" if mark is not None else config
        reason = getattr(exc, "problem", None) or str(exc)
        raise UsageError(f"{where}: not valid YAML: {reason}.") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise UsageError(f"{config}: a config is a mapping of sections, got {_kind(data)}.")
    where: dict[str, str] = {}
    raw: dict[str, str] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in (SECTION, "logging"):
                where[key.value] = f"{config}:{key.start_mark.line + 1}"
                _walk(value, key.value, config, where, raw)
    return data, where, raw


def _walk(
    node: yaml.Node, path: str, file: str, where: dict[str, str], raw: dict[str, str]
) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                child = f"{path}.{key.value}"
                where[child] = f"{file}:{key.start_mark.line + 1}"
                _walk(value, child, file, where, raw)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}.{index}"
            where[child] = f"{file}:{item.start_mark.line + 1}"
            _walk(item, child, file, where, raw)
    elif isinstance(node, yaml.ScalarNode) and node.style is None:
        raw[path] = node.value  # `time: 4:00:00` stays a time, not YAML 1.1's base-60 14400


def _parse_value(text: str) -> Any:
    import yaml

    if text.strip().lower() in ("none", "null", "~"):
        return None
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def _apply(
    root: dict[str, Any],
    ov: _Override,
    where: dict[str, str],
    raw: dict[str, str],
    problems: list[str],
) -> None:
    """Apply one `--slurm...` override to {"slurm": section}, the way the recipe would."""
    source = f"command line ({ov.token})"
    parts = ov.key.split(".")
    if ov.op != "delete" and ov.raw is None:
        problems.append(f"{source}: {ov.key}: needs a value: --{ov.key} VALUE or --{ov.key}=VALUE")
        return
    if ov.op == "delete" and ov.raw is not None:
        problems.append(f"{source}: {ov.key}: a deletion takes no value; write --~{ov.key}")
        return
    parent: Any = root
    for depth, part in enumerate(parts[:-1]):
        child = parent.get(part)
        if child is None and ov.op == "add":
            child = parent[part] = {}
        if not isinstance(child, dict):
            shown = ".".join(parts[: depth + 1])
            problems.append(
                f"{source}: {ov.key}: {shown} is not a mapping in the config"
                + (f"; to add it write --+{ov.key} VALUE" if ov.op == "set" else "")
            )
            return
        parent = child
    last = parts[-1]
    if ov.op != "add" and last not in parent:
        hint = f"; to add it write --+{ov.key} VALUE" if ov.op == "set" else ""
        problems.append(f"{source}: {ov.key}: not in the config{hint}")
        return
    for key in [k for k in (*where, *raw) if k == ov.key or k.startswith(ov.key + ".")]:
        where.pop(key, None)
        raw.pop(key, None)
    if ov.op == "delete":
        del parent[last]
        return
    assert ov.raw is not None
    parent[last] = _parse_value(ov.raw)
    raw[ov.key] = ov.raw
    where[ov.key] = source


def _logging_run_dir(
    data: dict[str, Any], others: list[_Override], where: dict[str, str], raw: dict[str, str]
) -> tuple[str | None, str]:
    """logging.run_dir after the overrides (as written) and where it comes from."""
    logging = data.get("logging")
    value = logging.get("run_dir") if isinstance(logging, dict) else None
    text = None if value is None else raw.get("logging.run_dir", str(value))
    source = where.get("logging.run_dir", "")
    for ov in others:
        if ov.key == "logging.run_dir":
            text = None if ov.op == "delete" else ov.raw
        elif ov.key == "logging":
            parsed = None if ov.op == "delete" or ov.raw is None else _parse_value(ov.raw)
            run_dir = parsed.get("run_dir") if isinstance(parsed, dict) else None
            text = None if run_dir is None else str(run_dir)
        else:
            continue
        source = f"command line ({ov.token})"
    return text, source


class _Reader:
    """Reads and checks each key of the section; every problem is collected, not raised."""

    def __init__(
        self,
        section: dict[str, Any],
        where: dict[str, str],
        raw: dict[str, str],
        section_where: str,
        environ: Mapping[str, str],
    ):
        self.section = section
        self.where = where
        self.raw = raw
        self.section_where = section_where
        self.environ = environ
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{self.where.get(path, self.section_where)}: {path}: {message}")

    def read(self, default_job_name: str, logging_run_dir: tuple[str | None, str]) -> dict:
        import difflib

        for key in self.section:
            if key not in KEYS:
                close = difflib.get_close_matches(str(key), KEYS, n=1, cutoff=0.6)
                hint = f" (did you mean '{SECTION}.{close[0]}'?)" if close else ""
                self.fail(f"{SECTION}.{key}", f"unknown key{hint}; the keys are {', '.join(KEYS)}")
        values: dict[str, Any] = {}
        job_name = self.text("job_name")
        if job_name is not None and not _JOB_NAME.fullmatch(job_name):
            self.fail(
                "slurm.job_name",
                f"expects letters, digits, '.', '_' and '-' (it also names the run directory "
                f"runs/<job_name>), got {job_name!r}",
            )
        values["job_name"] = job_name or default_job_name
        values["nodes"] = self.integer("nodes", default=1)
        gpus = self.integer("gpus_per_node")
        if self.section.get("gpus_per_node") is None:
            self.fail(
                "slurm.gpus_per_node",
                "required: the GPUs of each node, which is also the number of training "
                "processes torchrun starts on each node",
            )
        values["gpus_per_node"] = gpus or 1
        values["ntasks_per_node"] = self.integer("ntasks_per_node", default=1)
        values["cpus_per_task"] = self.integer("cpus_per_task")
        time = self.text("time")
        if time is not None and not _TIME.fullmatch(time):
            self.fail(
                "slurm.time",
                "expects a SLURM time limit such as 04:00:00, 1-12:00:00 or 90 (minutes), "
                f"got {time!r}",
            )
        values["time"] = time
        for key in ("account", "partition", "qos", "container_image", "python"):
            values[key] = self.word(key)
        values["container_mounts"] = self.mounts()
        if values["container_mounts"] and values["container_image"] is None:
            self.fail(
                "slurm.container_mounts", "needs container_image (mounts apply to a container)"
            )
        values["env"] = self.env()
        values["forward_env"] = self.forward_env()
        both = sorted({name for name, _ in values["env"]} & set(values["forward_env"]))
        if both:
            self.fail(
                "slurm.forward_env",
                f"{', '.join(both)} also set under env; keep one (forward_env passes the value "
                "from the environment you submit from)",
            )
        values["extra_sbatch_lines"] = self.sbatch_lines()
        values["master_port"] = self.integer("master_port", default=DEFAULT_MASTER_PORT)
        if not 1 <= values["master_port"] <= 65535:
            self.fail("slurm.master_port", f"expects a port 1..65535, got {values['master_port']}")
        values["run_dir"] = self.run_dir(values["job_name"], logging_run_dir)
        return values

    # -- scalars

    def text(self, key: str, path: str | None = None, value: Any = _UNSET) -> str | None:
        """A scalar as written (None when unset), with `${VAR}` references resolved."""
        path = path or f"{SECTION}.{key}"
        value = self.section.get(key) if value is _UNSET else value
        if value is None:
            return None
        if isinstance(value, dict | list):
            self.fail(path, f"expects a single value, got {_kind(value)}")
            return None
        text = self.raw.get(path)
        if text is None:
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return self.resolve(path, text)

    def resolve(self, path: str, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(1):  # `$${...}` is the literal `${...}`
                return match.group(0)[1:]
            name, comma, default = match.group(2).partition(",")
            name = name.strip()
            if not _ENV_NAME.fullmatch(name):
                self.fail(path, f"'{match.group(0)}' is not a valid reference; write ${{VAR}}")
            elif name in self.environ:
                return self.environ[name]
            elif comma:
                return default.strip()
            else:
                self.fail(
                    path,
                    f"environment variable {name} is not set; export it or give a default "
                    f"as ${{{name},default}}",
                )
            return match.group(0)

        return _REF.sub(replace, text) if "${" in text else text

    def integer(self, key: str, default: int | None = None) -> Any:
        text = self.text(key)
        if text is None:
            return default
        if not _DIGITS.fullmatch(text) or int(text) < 1:
            self.fail(f"{SECTION}.{key}", f"expects a positive integer, got {text!r}")
            return default if default is not None else 1
        return int(text)

    def word(self, key: str) -> str | None:
        text = self.text(key)
        if text is not None and (not text or any(ch.isspace() for ch in text)):
            self.fail(f"{SECTION}.{key}", f"expects a non-empty value without spaces, got {text!r}")
        return text

    # -- lists and mappings

    def items(self, key: str, *, allow_string: bool = False) -> list[tuple[str, str]]:
        """(path, text) for each entry of a list key."""
        value = self.section.get(key)
        path = f"{SECTION}.{key}"
        if value is None:
            return []
        if allow_string and not isinstance(value, dict | list):
            text = self.text(key)
            return [] if text is None else [(path, part) for part in text.split(",")]
        if not isinstance(value, list):
            self.fail(path, f"expects a list, got {_kind(value)}")
            return []
        found = []
        for index, item in enumerate(value):
            text = self.text(key, f"{path}.{index}", item)
            if text is None:
                if item is None:
                    self.fail(f"{path}.{index}", "is empty")
                continue
            found.append((f"{path}.{index}", text))
        return found

    def mounts(self) -> tuple[str, ...]:
        mounts = []
        for path, text in self.items("container_mounts", allow_string=True):
            if not text or "," in text or any(ch.isspace() for ch in text):
                self.fail(path, f"expects one mount SRC[:DST[:FLAGS]] without spaces, got {text!r}")
            mounts.append(text)
        return tuple(mounts)

    def forward_env(self) -> tuple[str, ...]:
        names: list[str] = []
        for path, text in self.items("forward_env"):
            if not _ENV_NAME.fullmatch(text):
                self.fail(path, f"expects an environment variable name, got {text!r}")
            elif text not in names:
                names.append(text)
        return tuple(names)

    def sbatch_lines(self) -> tuple[str, ...]:
        lines = []
        for path, text in self.items("extra_sbatch_lines"):
            line = text.strip()
            if not line.startswith("#SBATCH ") or "\n" in line or "\r" in line:
                self.fail(
                    path,
                    f"expects one line starting with '#SBATCH ', such as "
                    f"'#SBATCH --signal=USR1@120', got {text!r}",
                )
            lines.append(line)
        return tuple(lines)

    def env(self) -> tuple[tuple[str, str], ...]:
        value = self.section.get("env")
        path = f"{SECTION}.env"
        if value is None:
            return ()
        if not isinstance(value, dict):
            self.fail(path, f"expects a mapping NAME: value, got {_kind(value)}")
            return ()
        found = []
        for name, item in value.items():
            item_path = f"{path}.{name}"
            if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
                self.fail(item_path, "is not an environment variable name")
                continue
            if _looks_secret(name):
                self.fail(
                    item_path,
                    f"looks like a secret and would be written into the job script in plain "
                    f"text; export {name} where you submit and list it under "
                    f"{SECTION}.forward_env instead",
                )
                continue
            if item is None:
                self.fail(item_path, "has no value; write '' for an empty string")
                continue
            written = self.raw.get(item_path, str(item))
            refs = [
                m.group(2).partition(",")[0].strip()
                for m in _REF.finditer(written)
                if not m.group(1)  # `$${...}` is a literal, not a reference
            ]
            secret = [ref for ref in refs if _looks_secret(ref)]
            if secret:
                self.fail(
                    item_path,
                    f"refers to {secret[0]}, which looks like a secret and would be written into "
                    f"the job script; list {secret[0]} under {SECTION}.forward_env instead",
                )
                continue
            text = self.text(name, item_path, item)
            if text is not None:
                found.append((name, text))
        return tuple(found)

    def run_dir(self, job_name: str, logging_run_dir: tuple[str | None, str]) -> Path:
        text = self.text("run_dir")
        path = f"{SECTION}.run_dir"
        if text is None:
            template, source = logging_run_dir
            if template is not None and re.search(r"\$\{\s*SLURM_", template):
                self.problems.append(
                    f"{source or self.section_where}: logging.run_dir: {template!r} depends on "
                    "a SLURM variable that is only set inside the job; set slurm.run_dir to the "
                    "directory for the job script and its output"
                )
                return Path.cwd()
            if template is not None:
                path = "logging.run_dir"
                self.where[path] = source or self.where.get(path, self.section_where)
                text = self.resolve(path, template)
            else:
                text = f"runs/{job_name}"
        absolute = os.path.abspath(text or ".")
        if not text or any(ch.isspace() or ch in "%\"'" for ch in absolute):
            self.fail(
                path,
                f"the run directory {absolute!r} must not contain spaces, '%' or quotes "
                "(sbatch reads it in --output); set slurm.run_dir to another directory",
            )
        return Path(absolute)


def _comment(text: str) -> str:
    """One comment line, whatever a path in it contains."""
    return text.replace("\r", "?").replace("\n", "?")


def _looks_secret(name: str) -> bool:
    return name.upper() in SECRET_ENV or bool(_SECRET_NAME.search(name))


# ---------------------------------------------------------------------------------------------
# The script and submitting it


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
