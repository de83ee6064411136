"""A recipe whose module cannot be imported."""

import automodel_test_recipes_missing_dependency  # noqa: F401


def main(argv: list[str]) -> int:
    """Never runs: importing this module fails."""
    return 0
