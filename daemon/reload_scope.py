"""What a SIGHUP changes in a running egen, what it cannot, and what egen runs with.

Each component that can take new settings names the keys it applies (`RELOADS`, dotted
prefixes such as `smtp.users`); a changed key no component names (listen addresses,
the database, journals, delivery, routes, ingest listeners) keeps its old value until
a restart, and the reload says so key by key instead of appearing to take it. At start
the whole effective config is logged, one line per section, with secrets shown as ***.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import PurePath
from typing import Any

import orjson

from daemon.typedtoml import Secret

_NOT_SETTINGS = frozenset({"source"})      # where the file was, not what it says


def flatten(settings: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values by dotted key; lists and tables of entries (routes, users) are one
    leaf each, since their entries have no stable name to report."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        if not prefix and f.name in _NOT_SETTINGS:
            continue
        value = getattr(settings, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(flatten(value, f"{key}."))
        else:
            out[key] = value
    return out


def changed_keys(old: Any, new: Any) -> list[str]:
    before, after = flatten(old), flatten(new)
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def covered(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def needing_restart(keys: Iterable[str], reloadable: Iterable[str]) -> list[str]:
    prefixes = tuple(reloadable)
    return [k for k in keys if not covered(k, prefixes)]


def _shown(value: Any) -> str:
    """Secrets print as *** (Secret's str), everything else as JSON or plain text."""
    if isinstance(value, str | Secret | PurePath):
        return str(value)
    return orjson.dumps(value, default=str).decode()


def _keys_masked(projects: Any) -> list[Any]:
    """Project keys let anyone send events into a project: only their start is shown."""
    return [{**dataclasses.asdict(p), "keys": [f"{k[:4]}…" for k in p.keys]}
            if dataclasses.is_dataclass(p) and hasattr(p, "keys") else p for p in projects]


def effective(settings: Any) -> dict[str, dict[str, str]]:
    """Section -> {dotted key: shown value}, for the start-up log lines."""
    sections: dict[str, dict[str, str]] = {}
    for key, value in flatten(settings).items():
        shown = _shown(_keys_masked(value) if key == "projects" else value)
        section = key.partition(".")[0] if "." in key else "main"
        sections.setdefault(section, {})[key] = shown
    return sections
