"""Print a NeMo AutoModel config in automodel's own spelling, a comment on each changed line.

automodel migrate CONFIG.yaml [--out PATH]

The same translation that lets `automodel` run their configs unchanged (docs/migrating.md):
`nemo_automodel.*` targets through the alias table, their section and key names mapped, every
rewritten line ending in `# was ...`. Running the migrated file gives the same run (the same
losses, bit for bit) as running the original.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from automodel.core.config import UserError, migrate_nemo_config

_PROG = "automodel migrate"


def main(argv: list[str] | None = None) -> int:
    """Print a NeMo AutoModel config in automodel's spelling (comments on what changed)."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Print a NeMo AutoModel recipe config in automodel's own spelling, with a "
        "comment on each line that changed (see docs/migrating.md).",
    )
    parser.add_argument("config", metavar="CONFIG.yaml", help="a NeMo AutoModel config")
    parser.add_argument("--out", "-o", type=Path, help="write here instead of printing")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        text = migrate_nemo_config(args.config)
    except UserError as e:
        if args.debug:
            raise
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0
