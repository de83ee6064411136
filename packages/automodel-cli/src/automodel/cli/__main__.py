"""Entry point for `python -m automodel.cli` (also what torchrun starts in every process)."""

from automodel.cli import entry

if __name__ == "__main__":
    entry()
