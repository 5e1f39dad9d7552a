"""Allows `python -m daemon` where the console script is not on PATH."""

from daemon.cli.dispatch import main

raise SystemExit(main())
