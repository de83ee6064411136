"""Split a command line into what the CLI consumes and the overrides it passes to the recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

from automodel.cli._errors import UsageError
from automodel.cli._launch import LAUNCH_FLAGS, canonical_launch_flag, parse_launch_value

CONFIG_FLAGS = ("-c", "--config")
ALLOW_FLAG = "--allow-import"  # the recipe protocol's grants (automodel.core.config)
REMOTE_CODE_FLAG = "--trust-remote-code"


@dataclass
class Invocation:
    """A parsed command line; `overrides` are passed to the recipe verbatim and in order."""

    positionals: list[str] = field(default_factory=list)
    config: str | None = None
    debug: bool = False
    help: bool = False
    version: bool = False
    dry_run: bool = False
    no_slurm: bool = False  # ignore the config's `slurm:` section (what each SLURM job task runs)
    allow_imports: list[str] = field(default_factory=list)  # grants only the command line gives
    trust_remote_code: bool = False
    launch: dict[str, object] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    after_separator: list[str] | None = None  # the tokens after `--`, if it was given

    def recipe_overrides(self) -> list[str]:
        """Every override for the recipe, including those after `--`."""
        return [*self.overrides, *(self.after_separator or [])]

    def recipe_flags(self) -> list[str]:
        """The protocol flags the recipe gets: --debug and the command line's grants."""
        flags = ["--debug"] if self.debug else []
        for module in self.allow_imports:
            flags += [ALLOW_FLAG, module]
        return flags + ([REMOTE_CODE_FLAG] if self.trust_remote_code else [])

    def child_args(self, command: str, domain: str) -> list[str]:
        """The arguments each torchrun process gives `python -m automodel.cli` (no launch flags)."""
        args = [command, domain, *self.recipe_flags()]
        args += ["-c", self.config or "", *self.overrides]
        if self.after_separator is not None:
            args += ["--", *self.after_separator]
        return args


def debug_requested(argv: list[str]) -> bool:
    """True when `--debug` appears before any `--` separator (checked before parsing can fail)."""
    head = argv[: argv.index("--")] if "--" in argv else argv
    return "--debug" in head


def parse_args(argv: list[str]) -> Invocation:
    """Consume the CLI's own flags anywhere on the line; everything else is an override."""
    inv = Invocation()
    passthrough = False  # after the first override, bare words are override values
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        name, has_value, inline = (
            token.partition("=") if token.startswith("--") else (token, "", "")
        )
        if token == "--":
            inv.after_separator = argv[i:]
            break
        if token in ("-h", "--help"):
            inv.help = True
        elif token == "--version":
            inv.version = True
        elif token == "--debug":
            inv.debug = True
        elif token == "--dry-run":
            inv.dry_run = True
        elif token == "--no-slurm":
            inv.no_slurm = True
        elif token == REMOTE_CODE_FLAG:
            inv.trust_remote_code = True
        elif name == ALLOW_FLAG:
            value, i = _value(argv, i, name, inline if has_value else None, "MODULE")
            inv.allow_imports.append(value)
        elif name in CONFIG_FLAGS or token.startswith("-c="):
            if token.startswith("-c="):
                name, has_value, inline = token.partition("=")
            value, i = _value(argv, i, name, inline if has_value else None, "CONFIG")
            if inv.config is not None:
                raise UsageError(f"-c/--config was given twice ({inv.config!r} and {value!r}).")
            inv.config = value
        elif (flag := canonical_launch_flag(name)) is not None:
            value, i = _value(argv, i, flag, inline if has_value else None, LAUNCH_FLAGS[flag][2])
            if flag in inv.launch:
                raise UsageError(f"{flag} was given more than once.")
            inv.launch[flag] = parse_launch_value(flag, value)
        elif token.startswith("-"):
            passthrough = True
            inv.overrides.append(token)
        elif passthrough:
            inv.overrides.append(token)
        else:
            inv.positionals.append(token)
    return inv


def _value(argv: list[str], i: int, flag: str, inline: str | None, metavar: str) -> tuple[str, int]:
    """The value of `flag`: inline (`--flag=v`) or the next token; a missing one is an error."""
    if inline is None and i < len(argv) and not argv[i].startswith("--"):
        return argv[i], i + 1
    if inline:
        return inline, i
    raise UsageError(f"{flag} is missing its value: write {flag} {metavar}.")
