"""The argv protocol between the `automodel` CLI and a recipe: parse, load, validate, run."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._errors import ConfigError, UserError
from ._load import load_config
from ._node import ConfigNode
from ._trust import ALLOW_ENV, ALLOW_FLAG, REMOTE_CODE_FLAG, parse_grants
from ._validate import Section, validate_config


@dataclass
class RecipeArgs:
    """What a recipe's argv says: the config file, overrides and protocol flags."""

    config: str
    overrides: list[str] = field(default_factory=list)
    validate_only: bool = False
    debug: bool = False
    allowed_imports: list[str] = field(default_factory=list)
    trust_remote_code: bool = False


def parse_recipe_argv(argv: Sequence[str]) -> RecipeArgs:
    """Split `[--validate-only] [--debug] [--allow-import M] [--trust-remote-code] -c PATH
    [overrides]` into its parts."""
    config = None
    flags = RecipeArgs(config="")
    args = list(argv)
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name in ("-c", "--config", ALLOW_FLAG):
            if not eq:
                if i + 1 >= len(args):
                    raise UserError(f"{name} needs a value")
                i += 1
                value = args[i]
            if name == ALLOW_FLAG:
                flags.allowed_imports.append(value)
            else:
                config = value
        elif args[i] == "--validate-only":
            flags.validate_only = True
        elif args[i] == "--debug":
            flags.debug = True
        elif args[i] == REMOTE_CODE_FLAG:
            flags.trust_remote_code = True
        else:
            flags.overrides.append(args[i])
        i += 1
    if config is None:
        raise UserError("no config given; pass -c CONFIG.yaml")
    flags.config = config
    return flags


def recipe_main(
    argv: Sequence[str] | None,
    *,
    sections: Mapping[str, Section],
    run: Callable[[ConfigNode], Any],
    check: Callable[[ConfigNode], None] | None = None,
) -> int:
    """Run a recipe from argv; user mistakes print one message and return 2, never a traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    from automodel.core.logging import quiet_upstream_noise  # logging imports config

    quiet_upstream_noise(debug)
    try:
        args = parse_recipe_argv(argv)
        granted = [*args.allowed_imports, *parse_grants(os.environ.get(ALLOW_ENV, ""))]
        cfg = load_config(
            args.config,
            args.overrides,
            allowed_imports=granted,
            trust_remote_code=args.trust_remote_code,
            sections=sections,
        )
        try:
            validate_config(cfg, sections)
            if check is not None:
                check(cfg)
            if args.validate_only:
                _say(f"config OK: {args.config}", sys.stdout)
                return 0
            result = run(cfg)
        except ConfigError as e:  # a recipe may raise one about a key without its location
            located = e.located(cfg.where)
            if located is e:
                raise
            raise located from e
    except UserError as e:
        if debug:
            traceback.print_exc()
        message = f"error: {e}" + ("" if debug else "\n(run with --debug to see the traceback)")
        rank = os.environ.get("RANK", "0")
        # every rank says why it stops: the first to fail may be one torchrun ends the others for
        print(message if rank == "0" else f"rank {rank}: {message}", file=sys.stderr, flush=True)
        return 2
    return result if isinstance(result, int) else 0


def _say(message: str, stream: Any) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(message, file=stream, flush=True)
