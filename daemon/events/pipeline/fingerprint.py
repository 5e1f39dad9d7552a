"""Grouping: which events are the same problem, and so one issue.

Sentry's default rules, reduced to what survives a deploy. An exception is its type plus the
code path that raised it: the module (or a path stripped of its install prefix) and function
of each in-app frame. Line numbers, absolute paths, source lines, releases and the values in
the message never count, so a redeploy, an added comment or a different user id keep the
issue. A message is its logger plus its template with the variable parts parameterized. A
`fingerprint` sent by the client replaces all of this; `{{ default }}` in it stands for the
default components.

The rules are versioned. Each issue stores the GROUPING_VERSION its hash was computed with.
A change to the rules adds a version to SUPPORTED_VERSIONS next to the old one, so that for a
transition period ingest can compute both hashes and find an existing issue under the old
one; afterwards the old version is removed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

from daemon.events.pipeline.model import Event, ExceptionInfo, Frame
from daemon.events.pipeline.parameterize import parameterize

GROUPING_VERSION = 1

_VARIABLE = re.compile(r"\{\{\s*([\w.]+)\s*\}\}")
_PACKAGE_DIRS = ("/site-packages/", "/dist-packages/")
_APP_PATH_DEPTH = 2  # `shop/cart.py` of /srv/app-v1/shop/cart.py


def grouping_components(event: Event, version: int = GROUPING_VERSION) -> list[str]:
    """The readable parts the hash is made of, in order (`type:…`, `frame:…`, `message:…`).
    Raises ValueError for a version that is not in SUPPORTED_VERSIONS."""
    strategy = SUPPORTED_VERSIONS.get(version)
    if strategy is None:
        raise ValueError(f"grouping version {version} is not supported "
                         f"(supported: {', '.join(map(str, sorted(SUPPORTED_VERSIONS)))})")
    return strategy(event)


def grouping_hash(event: Event, version: int = GROUPING_VERSION) -> str:
    """The issue key: 32 hex digits, equal for events that are the same problem."""
    digest = hashlib.blake2b(digest_size=16)
    for component in grouping_components(event, version):
        data = component.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(4, "big"))  # length-prefixed: no two lists collide
        digest.update(data)
    return digest.hexdigest()


def _components_v1(event: Event) -> list[str]:
    default = _default_components(event)
    if not event.fingerprint:
        return default
    components: list[str] = []
    for entry in event.fingerprint:
        match = _VARIABLE.fullmatch(entry.strip())
        name = match.group(1).lower().removeprefix("error.") if match else ""
        if name == "default":
            components.extend(default)
        elif name in _VARIABLES:
            components.append(f"variable:{name}={_VARIABLES[name](event)}")
        else:
            components.append(f"custom:{entry}")
    return components


def _default_components(event: Event) -> list[str]:
    """Exceptions, else the message, else the event's own stack trace."""
    if event.exceptions:
        return _exception_components(event.exceptions)
    template = event.message_template or event.message
    if template:
        return [f"logger:{event.logger or ''}", f"message:{parameterize(template)}"]
    if event.stacktrace:
        frames = _frame_components(event.stacktrace, any(f.in_app for f in event.stacktrace))
        if frames:
            return frames
    return ["fallback"]  # nothing identifies it: every such event is one issue


def _exception_components(exceptions: tuple[ExceptionInfo, ...]) -> list[str]:
    """Each exception of the chain: its type, then its frames. When any frame of the chain
    is in-app, only in-app frames count; an exception left without frames counts its
    parameterized value instead."""
    app_only = any(frame.in_app for exc in exceptions for frame in exc.frames)
    components: list[str] = []
    for exc in exceptions:
        components.append(f"type:{exc.type or ''}")
        frames = _frame_components(exc.frames, app_only)
        components.extend(frames or [f"value:{parameterize(exc.value or '')}"])
    return components


def _frame_components(frames: tuple[Frame, ...], app_only: bool) -> list[str]:
    """`frame:location:function` per frame, oldest first. Direct recursion counts once, so a
    RecursionError groups whatever its depth."""
    components: list[str] = []
    for frame in frames:
        if app_only and not frame.in_app:
            continue
        location = frame.module or normalize_path(frame.filename or frame.abs_path or "")
        if not location and not frame.function:
            continue
        component = f"frame:{location}:{frame.function or ''}"
        if not components or components[-1] != component:
            components.append(component)
    return components


def normalize_path(path: str) -> str:
    """A source path without what differs between installs: the part after the last
    `site-packages/` or `dist-packages/` for libraries, else the last two components;
    no query string (JavaScript URLs), `.pyc` read as `.py`, `/` as the separator."""
    path = path.replace("\\", "/").split("?", 1)[0].split("#", 1)[0]
    cut = max(path.rfind(marker) + len(marker) if marker in path else -1
              for marker in _PACKAGE_DIRS)
    path = path[cut:] if cut >= 0 else "/".join(path.split("/")[-_APP_PATH_DEPTH:])
    return path[:-1] if path.endswith(".pyc") else path


def _crash_frame(event: Event) -> Frame | None:
    """The frame the culprit names: most recent in-app one of the top-level exception."""
    frames = event.exceptions[-1].frames if event.exceptions else event.stacktrace
    return next((f for f in reversed(frames) if f.in_app), frames[-1] if frames else None)


def _exception_field(event: Event, name: str) -> str:
    return (getattr(event.exceptions[-1], name) or "") if event.exceptions else ""


def _frame_field(event: Event, name: str) -> str:
    frame = _crash_frame(event)
    return (getattr(frame, name) or "") if frame else ""


# Sentry's fingerprint variables besides {{ default }}, with their `error.` aliases; the
# values are taken as they are (asking for the value means splitting by it). An unknown
# variable is a literal entry.
_VARIABLES: Mapping[str, Callable[[Event], str]] = MappingProxyType({
    "transaction": lambda event: event.transaction or "",
    "type": lambda event: _exception_field(event, "type"),
    "value": lambda event: _exception_field(event, "value"),
    "level": lambda event: event.level,
    "logger": lambda event: event.logger or "",
    "message": lambda event: event.message or "",
    "function": lambda event: _frame_field(event, "function"),
    "module": lambda event: _frame_field(event, "module"),
})

SUPPORTED_VERSIONS: Mapping[int, Callable[[Event], list[str]]] = MappingProxyType({
    1: _components_v1,
})
