"""Dispatch a parsed command line: help, version, list, validate, run a recipe, or a command."""

from __future__ import annotations

import os
import sys
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import TYPE_CHECKING

from automodel.cli import _help
from automodel.cli._args import Invocation, debug_requested, parse_args
from automodel.cli._discovery import (
    describe,
    distribution_label,
    installed_commands,
    installed_recipes,
    load_recipe,
)
from automodel.cli._errors import CliError, UsageError
from automodel.cli._launch import resolve_launch, run_torchrun, torchrun_command
from automodel.cli._nemo_route import is_config_path, route

if TYPE_CHECKING:
    from automodel.cli._slurm_job import SlurmJob


def main(argv: list[str] | None = None) -> int:
    """Run the `automodel` command line (`argv` defaults to sys.argv[1:]); return the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = debug_requested(args)
    try:
        return _dispatch(args)
    except CliError as err:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"automodel: error: {err}", file=sys.stderr)
        return err.exit_code


def _dispatch(args: list[str]) -> int:
    status = _command(args)
    if status is not None:
        return status
    inv = parse_args(args)
    _route_config_path(inv)
    if inv.version:
        print(f"automodel-cli {_version()}")
        return 0
    if not inv.positionals or inv.positionals[0] == "help":
        topic = inv.positionals[1:2] if inv.positionals else []
        if not (inv.help or inv.positionals):
            raise UsageError(
                "no command given. Run a recipe with `automodel <command> <domain> -c CONFIG` "
                "(e.g. `automodel finetune llm -c finetune.yaml`); `automodel list` shows the "
                "installed recipes and `automodel --help` explains the options."
            )
        print(_help_for(topic[0] if topic else None), end="")
        return 0
    command, rest = inv.positionals[0], inv.positionals[1:]
    if inv.help:
        print(_help_for(command, rest[0] if rest else None), end="")
        return 0
    if command == "list":
        return _list(rest, inv)
    if command == "validate":
        return _run(rest, inv, validate=True)
    return _run(inv.positionals, inv, validate=False)


def _route_config_path(inv: Invocation) -> None:
    """`automodel [validate] CFG.yaml ...` (NeMo AutoModel's command line): the recipe comes from
    the config's `recipe:` key, as if `automodel [validate] <command> <domain> -c CFG.yaml`."""
    words = inv.positionals
    lead = words[:1] if words[:1] == ["validate"] else []
    rest = words[len(lead) :]
    if len(rest) != 1 or not is_config_path(rest[0]) or inv.config is not None or inv.help:
        return
    inv.config = rest[0]
    inv.positionals = [*lead, *route(rest[0])]


_BUILT_IN = ("help", "list", "validate")  # the CLI's own words, never looked up as commands


def _command(args: list[str]) -> int | None:
    """`automodel [--debug] <name> ARGS...` (or `automodel help <name>`) for a command of the
    group automodel.commands: called in this process with ARGS verbatim (and --debug if given
    before the name). None when the first word is no installed command."""
    lead = 0
    while lead < len(args) and args[lead] == "--debug":
        lead += 1
    words = args[lead:]
    if words[:1] == ["help"] and len(words) > 1:
        words = [words[1], "--help"]
    if not words or words[0].startswith("-") or words[0] in _BUILT_IN:
        return None
    ep = installed_commands().get(words[0])
    if ep is None:
        return None
    argv = ["--debug"] * bool(lead) + words[1:]
    return _call(load_recipe(ep, "command"), argv, debug=bool(lead) or debug_requested(argv))


def _help_for(command: str | None, domain: str | None = None) -> str:
    if command == "list":
        return _help.list_help()
    recipes = installed_recipes()
    if command == "validate":
        return _help.validate_help(list(recipes))
    if not command:
        commands = {name: describe(ep) for name, ep in installed_commands().items()}
        return _help.main_help(list(recipes), commands)
    ep = recipes.get(f"{command}.{domain}")
    about = f"{ep.name}: {describe(ep)}" if ep is not None else None
    return _help.command_help(command, list(recipes), about)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("automodel-cli")
    except PackageNotFoundError:
        return "(unknown version: automodel-cli is not installed as a distribution)"


def _list(rest: list[str], inv: Invocation) -> int:
    extra = rest[1:] + inv.recipe_overrides() + list(inv.launch)
    if extra or inv.config is not None:
        shown = extra[0] if extra else "-c"
        raise UsageError(f"unexpected argument {shown!r} for `automodel list [<command>]`.")
    recipes = installed_recipes()
    if rest:
        recipes = {
            n: ep for n, ep in recipes.items() if n == rest[0] or n.startswith(rest[0] + ".")
        }
    if not recipes:
        scope = f"for '{rest[0]}' " if rest else ""
        print(f"No recipes {scope}are installed. {_help.HOW_TO_GET_RECIPES}")
        return 0
    width = max(len(name) for name in recipes)
    for name, ep in recipes.items():
        label = distribution_label(ep)
        origin = f"  ({label})" if label else ""
        print(f"{name:<{width}}  {describe(ep)}{origin}")
    return 0


def _run(positionals: list[str], inv: Invocation, *, validate: bool) -> int:
    verb = "automodel validate" if validate else "automodel"
    if not positionals:
        raise UsageError(f"`{verb}` needs a recipe: {verb} <command> <domain> -c CONFIG.")
    recipes = installed_recipes()
    command = positionals[0]
    if len(positionals) < 2:
        raise _missing_domain(verb, command, recipes)
    domain = positionals[1]
    if len(positionals) > 2:
        raise UsageError(
            f"unexpected argument {positionals[2]!r} after `{verb} {command} {domain}`. "
            "Config overrides are written --section.key VALUE; see `automodel --help`."
        )
    name = f"{command}.{domain}"
    ep = recipes.get(name)
    job = None
    if ep is None:
        job = _containerised_job(inv, command, domain) if not validate else None
        if job is None:
            raise _unknown_recipe(name, f"{verb} {command} {domain}", recipes)
        print(
            f"automodel: note: no recipe named '{name}' is installed here; submitting anyway, "
            f"since the job runs in the container {job.container_image}.",
            file=sys.stderr,
        )
    if inv.config is None:
        raise UsageError(
            f"missing the config file: {verb} {command} {domain} -c CONFIG [overrides...]."
        )
    _check_config(inv.config)
    launch = resolve_launch(inv.launch)
    if job is None and not inv.no_slurm:
        job = _slurm_job(inv, command, domain)
    if job is not None:
        if inv.launch:
            raise UsageError(
                f"{', '.join(inv.launch)} cannot be used with the slurm: section of "
                f"{inv.config}: the section decides the launch (slurm.nodes, "
                "slurm.gpus_per_node). Drop the flag, or add --no-slurm to ignore the section "
                "and launch on this machine."
            )
        if not validate:
            from automodel.cli import _slurm_script

            return _slurm_script.submit(job, dry_run=inv.dry_run)
    if launch.uses_torchrun and not validate:
        cmd = torchrun_command(launch, inv.child_args(command, domain))
        if inv.dry_run:
            return _print_command(cmd)
        return run_torchrun(cmd)
    if inv.dry_run:
        prefix = ["validate"] if validate else []
        cmd = [sys.executable, "-m", "automodel.cli", *prefix, *inv.child_args(command, domain)]
        return _print_command(cmd)
    flags = [*inv.recipe_flags(), *(["--validate-only"] if validate else [])]
    overrides = inv.recipe_overrides() if job is None else job.recipe_overrides()
    if validate:  # check the sizes against the processes the run would have
        world = launch.nproc_per_node * launch.nnodes if job is None else job.world_size
        os.environ.setdefault("WORLD_SIZE", str(world))
    assert ep is not None  # only a containerised SLURM job goes on without a local recipe
    return _call(load_recipe(ep), [*flags, "-c", inv.config, *overrides], inv.debug)


def _slurm_job(inv: Invocation, command: str, domain: str) -> SlurmJob | None:
    """The config's validated `slurm:` section (None without one); YAML is read only if needed."""
    from automodel.cli import _slurm_section, _slurm_validate

    assert inv.config is not None
    if not _slurm_section.mentions_slurm(inv.config, inv.overrides):
        return None  # the common case: no YAML parsing in the CLI at all
    return _slurm_validate.load_job(
        inv.config, inv.overrides, inv.after_separator, command, domain, flags=inv.recipe_flags()
    )


def _containerised_job(inv: Invocation, command: str, domain: str) -> SlurmJob | None:
    """A SLURM job that runs in a container, which may have a recipe this machine lacks."""
    if inv.no_slurm or inv.config is None or not Path(inv.config).is_file():
        return None
    job = _slurm_job(inv, command, domain)
    return job if job is not None and job.container_image is not None else None


def _print_command(cmd: list[str]) -> int:
    import shlex

    print(shlex.join(cmd))
    return 0


def _call(fn: object, argv: list[str], debug: bool) -> int:
    """Call the recipe in this process and turn what it returns (or raises) into an exit status."""
    try:
        result = fn(argv)  # type: ignore[operator]
    except SystemExit as exc:
        result = exc.code
    except KeyboardInterrupt:
        if debug:
            raise
        print("automodel: interrupted", file=sys.stderr)
        return 130
    if result is None:
        return 0
    if isinstance(result, int):
        return int(result)
    print(result, file=sys.stderr)  # the same convention as sys.exit("message")
    return 1


def _check_config(config: str) -> None:
    path = Path(config)
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise UsageError(f"config file {config!r} does not exist{where}.")
    if not path.is_file():
        raise UsageError(f"config {config!r} is not a file; -c expects a YAML file.")


def _unknown_recipe(
    name: str, asked: str, recipes: dict[str, EntryPoint], message: str | None = None
) -> UsageError:
    import difflib

    message = message or f"no recipe named '{name}' is installed (asked for by `{asked}`)."
    close = difflib.get_close_matches(name, list(recipes), n=1, cutoff=0.6)
    if close:
        message += f" Did you mean '{close[0]}'?"
    if recipes:
        message += f" Installed recipes: {', '.join(recipes)}."
    else:
        message += " No recipes are installed."
    return UsageError(f"{message} {_help.HOW_TO_GET_RECIPES}")


def _missing_domain(verb: str, command: str, recipes: dict[str, EntryPoint]) -> UsageError:
    names = [name for name in recipes if name.startswith(command + ".")]
    if not names:
        message = f"no recipes for the command '{command}' are installed (asked for by `{verb} {command}`)."
        return _unknown_recipe(command, "", recipes, message)
    return UsageError(
        f"`{verb} {command}` needs a domain: {verb} {command} <domain> -c CONFIG. "
        f"Installed '{command}' recipes: {', '.join(names)}."
    )
