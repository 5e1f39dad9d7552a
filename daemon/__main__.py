"""Allows `python -m daemon` where the console script is not on PATH."""

from daemon.cli import main

raise SystemExit(main())
