"""`python -m core` runs the `dualcore` command line."""

from core.cli import main

raise SystemExit(main())
