"""The `automodel` command: finds installed recipes, validates configs and launches runs.

Importing this package imports neither torch nor any other automodel package.
"""

from automodel.cli._app import main

__all__ = ["main"]
