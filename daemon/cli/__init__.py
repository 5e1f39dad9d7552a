"""The `egen` command: `dispatch.main` parses arguments and hands each verb to its module."""

from daemon.cli.dispatch import main

__all__ = ["main"]
