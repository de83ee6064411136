"""The `automodel` command: finds installed recipes, validates configs and launches runs.

Importing this package imports neither torch nor any other automodel package.
"""

from automodel.cli._app import main


def entry() -> None:
    """The `automodel` console script and `python -m automodel.cli`: run `main`, then exit."""
    from automodel.cli._exit import exit_process

    exit_process(main())


__all__ = ["entry", "main"]
