"""Help texts for `automodel --help` and `automodel <command> --help`."""

from __future__ import annotations

from automodel.cli._discovery import GROUP
from automodel.cli._launch import LAUNCH_FLAGS

HOW_TO_GET_RECIPES = (
    "To get the standard recipes, run `pip install automodel-recipes` (or `uv add "
    "automodel-recipes`); any package can add its own by registering an entry point in the "
    f"group '{GROUP}' named '<command>.<domain>' that points to a function "
    "main(argv: list[str]) -> int."
)

_USAGE = """\
usage: automodel <command> <domain> -c CONFIG [launch options] [--debug] [--dry-run] [overrides...]
       automodel validate <command> <domain> -c CONFIG [--debug] [overrides...]
       automodel list [<command>]
       automodel [<command>] --help | --version"""

_OPTIONS = """\
options:
  -c, --config CONFIG     the recipe's YAML config file (required to run or validate)
  --debug                 show tracebacks of the CLI's own errors; also passed to the recipe
  --dry-run               print the command that would run (one line), or with a slurm:
                          section the sbatch script, and exit without running anything
  --no-slurm              ignore the config's slurm: section and run on this machine
  --allow-import NAME     let the config call NAME (a callable, or a module and all below
                          it) beyond the built-in allow-list; a config cannot grant this
  --trust-remote-code     let the config run code from model repositories
                          (trust_remote_code, Hub kernels); a config cannot grant this
  -h, --help              show help; `automodel <command> --help` for one command
  --version               print the automodel-cli version"""

_OVERRIDES = """\
overrides (everything the CLI does not use itself, passed to the recipe in order):
  --section.key VALUE     set a config value; --section.key=VALUE works too
  --+section.key VALUE    add a key that the config file does not have
  --~section.key          delete a key
  --slurm.key VALUE       change the slurm: section (kept by the CLI, not passed on)
  --                      pass everything after it to the recipe unchanged"""


def _launch_section() -> str:
    lines = ["launch options (default: one process, run in this process):"]
    for flag, (_, _, metavar, text) in LAUNCH_FLAGS.items():
        usage = f"{flag} {metavar}"
        if len(usage) > 22:
            lines += [f"  {usage}", f"  {'':22}  {text}"]
        else:
            lines.append(f"  {usage:22}  {text}")
    lines.append(
        "  Several processes or nodes: the CLI runs torchrun (`python -m\n"
        "  automodel.distributed._torchrun ... -m automodel.cli ...`) and forwards SIGINT/SIGTERM\n"
        "  to it; each process runs the recipe, and a failed run exits with the first failed\n"
        "  process's exit code.\n"
        "  A `slurm:` section in the config (nodes, gpus_per_node, time, ...) instead writes an\n"
        "  sbatch script into the run directory and submits it; launch options are then refused."
    )
    return "\n".join(lines)


def _recipes_line(names: list[str]) -> str:
    if not names:
        return "installed recipes: none. " + HOW_TO_GET_RECIPES
    return f"installed recipes: {', '.join(names)} (details: `automodel list`)"


def _commands_lines(commands: dict[str, str]) -> str:
    """One line per installed command of the group automodel.commands (e.g. plot)."""
    return "".join(f"  {name:<22}  {about}\n" for name, about in commands.items())


def main_help(names: list[str], commands: dict[str, str] | None = None) -> str:
    """The text of `automodel --help`; `commands`: installed command name -> description."""
    return f"""\
{_USAGE}

Run a training recipe from one YAML file, on one GPU or hundreds.

commands:
  <command> <domain>      run the recipe registered as '<command>.<domain>', e.g. `finetune llm`
  validate                check a config against a recipe without running it
  list                    show the installed recipes with a one-line description
{_commands_lines(commands or {})}
{_OPTIONS}

{_launch_section()}

{_OVERRIDES}

examples:
  automodel finetune llm -c finetune.yaml --optimizer.lr 1e-4
  automodel finetune llm -c finetune.yaml --nproc-per-node 8
  automodel finetune llm -c finetune.yaml --nnodes 2 --nproc-per-node 8 --rdzv-endpoint node0:29400
  automodel finetune llm -c slurm.yaml --slurm.nodes 4 --dry-run   # print the sbatch script
  automodel validate finetune llm -c finetune.yaml --+model.revision main
  automodel plot runs/a runs/b --x time    # with automodel-recipes: curves of two runs

{_recipes_line(names)}
"""


def list_help() -> str:
    """The text of `automodel list --help`."""
    return """\
usage: automodel list [<command>]

Show every installed recipe (or those of one command) with the first line of its docstring
and the distribution that registered it. Recipes are not imported to do this.
"""


def validate_help(names: list[str]) -> str:
    """The text of `automodel validate --help`."""
    return f"""\
usage: automodel validate <command> <domain> -c CONFIG [--debug] [overrides...]

Load CONFIG with the overrides applied and check it against the recipe (sections, keys,
`_target_` paths and their arguments) without building a model or starting training.
The recipe is called with --validate-only; the exit status is 0 when the config is valid.
Launch options are accepted and checked, but validation always runs in this process.

{_OVERRIDES}

{_recipes_line(names)}
"""


def command_help(command: str, names: list[str], about: str | None = None) -> str:
    """The text of `automodel <command> [<domain>] --help`; `about` describes one recipe."""
    domains = [name.split(".", 1)[1] for name in names if name.startswith(command + ".")]
    if domains:
        known = f"installed domains for '{command}': {', '.join(domains)}"
    else:
        known = f"No '{command}' recipes are installed; " + _recipes_line(names)
    summary = about or f"Run the recipe '{command}.<domain>' with CONFIG and the overrides applied."
    return f"""\
usage: automodel {command} <domain> -c CONFIG [launch options] [--debug] [--dry-run] [overrides...]

{summary}

{_OPTIONS}

{_launch_section()}

{_OVERRIDES}

{known}
"""
