"""``python -m numfed``: the same as the ``numfed`` command."""

from numfed.cli import main

raise SystemExit(main())
