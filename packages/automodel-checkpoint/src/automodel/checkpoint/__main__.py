"""``python -m automodel.checkpoint consolidate|inspect ...``."""

from ._tools import main

raise SystemExit(main())
