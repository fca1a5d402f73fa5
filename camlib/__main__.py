"""``python -m camlib explain IMAGES... --out DIR``: see :mod:`camlib.cli`."""

from .cli import main

raise SystemExit(main())
