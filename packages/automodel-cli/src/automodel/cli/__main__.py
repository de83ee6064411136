"""Entry point for `python -m automodel.cli` (also what torchrun starts in every process)."""

import sys

from automodel.cli import main

if __name__ == "__main__":
    sys.exit(main())
