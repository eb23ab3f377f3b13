"""``python -m workbench ...``: see :mod:`workbench.cli`."""

from .cli import main

raise SystemExit(main())
