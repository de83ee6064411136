"""Checking every key of the `slurm:` section and building the SlurmJob (load_job)."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from automodel.cli._errors import UsageError
from automodel.cli._nemo_route import looks_like_nemo, translate_slurm
from automodel.cli._slurm_job import DEFAULT_MASTER_PORT, KEYS, SECRET_ENV, SECTION, SlurmJob
from automodel.cli._slurm_section import (
    _apply,
    _kind,
    _logging_run_dir,
    _read_yaml,
    mentions_slurm,
    split_overrides,
)

_SECRET_NAME = re.compile(r"(?:^|_)(?:TOKEN|KEY|SECRET)$|PASSWORD|PASSWD", re.IGNORECASE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REF = re.compile(r"\$(\$?)\{([^{}]*)\}")  # the config's `${VAR}` / `${VAR,default}`
_DIGITS = re.compile(r"[0-9]+")
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TIME = re.compile(r"(?:[0-9]+-)?[0-9]+(?::[0-9]{1,2}){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)
_DOCS = "see the SLURM section of docs/cli.md"
_UNSET = object()


def load_job(
    config: str,
    overrides: list[str],
    after_separator: list[str] | None,
    command: str,
    domain: str,
    *,
    flags: list[str] | None = None,
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
    if isinstance(section, dict) and looks_like_nemo(data):  # their spelling (docs/migrating.md)
        section, problems = translate_slurm(section, where, raw, environ)  # type: ignore[arg-type]
        if problems:
            raise UsageError(_format(problems))
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
        flags=tuple(flags or ()),
        **values,
    )


def _format(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"invalid slurm section: {problems[0]}."
    items = "".join(f"\n  - {p}" for p in problems)
    return f"invalid slurm section ({len(problems)} problems):{items}\n({_DOCS})"


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


def _looks_secret(name: str) -> bool:
    return name.upper() in SECRET_ENV or bool(_SECRET_NAME.search(name))
