"""Errors the CLI reports as one message on stderr, without a traceback."""


class CliError(Exception):
    """A failure the CLI explains in one paragraph; `exit_code` is the process exit status."""

    exit_code = 1


class UsageError(CliError):
    """The command line, a flag value or a file named on it is wrong (exit status 2)."""

    exit_code = 2


class RecipeLoadError(CliError):
    """An installed recipe's entry point could not be imported or is not callable (exit status 1)."""


class LaunchError(CliError):
    """A multi-process launch cannot start in this environment (exit status 1)."""
