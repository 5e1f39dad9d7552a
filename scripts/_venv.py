"""Run a scripts/bench-* file with the project's .venv, whatever `python3` started it.

The benchmarks import egen and its dependencies; started by a system Python they would
fail with ModuleNotFoundError. When the running interpreter is not the project's .venv,
the script is executed again through _bootstrap.sh, which creates and fills .venv first
(the same step ./scripts/run and ./scripts/test take).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ensure(script: str) -> None:
    """Re-exec `script` (with this process's arguments) inside .venv unless already there."""
    venv = (ROOT / ".venv").resolve()
    if Path(sys.prefix).resolve() == venv:
        return
    bootstrap = ROOT / "scripts" / "_bootstrap.sh"
    os.execvp("bash", ["bash", "-c", 'source "$0"; exec python "$@"', str(bootstrap),
                       str(Path(script).resolve()), *sys.argv[1:]])
