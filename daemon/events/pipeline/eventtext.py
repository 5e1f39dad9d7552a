"""The readable parts of an event: its title and culprit as Sentry shows them, and a log
template formatted with its params. Apart from normalize.py, which checks the event's
shape; this decides what a person reads in an issue list."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.events.pipeline.model import ExceptionInfo, Frame

MAX_TITLE = 1024
MAX_NAME = 200  # culprit, transaction, release, server_name, tags, fingerprint entries
MAX_PARAM = 1024  # a message param, before formatting
_WIDE_FORMAT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\d*\.)?(?:\*|\d{4,})")
_MAX_PLACEHOLDERS = 64


def huge(value: Any) -> bool:
    return isinstance(value, int) and abs(value) >= 10**40


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def format_message(template: str, params: Any) -> str:
    """`template % params` as the SDK's logging call would have done, or the template. Only
    scalar params, bounded in length and count: a small payload must not format into a huge
    string (`%(a)s` may repeat, widths may be large)."""
    items = (params.items() if isinstance(params, dict)
             else enumerate(params) if isinstance(params, list) else ())
    clean = {k: truncate(v, MAX_PARAM) if isinstance(v, str) else v for k, v in items}
    if (not clean or template.count("%") > _MAX_PLACEHOLDERS or _WIDE_FORMAT.search(template)
            or any(isinstance(v, dict | list) or huge(v) for v in clean.values())):
        return template
    args = clean if isinstance(params, dict) else tuple(clean.values())
    try:
        return template % args
    except (TypeError, ValueError, KeyError, IndexError, OverflowError):
        return template


def first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def title(exceptions: tuple[ExceptionInfo, ...], message: str | None) -> str:
    """Sentry's title: `Type: first line of value` of the top-level exception, else the
    message's first line."""
    if exceptions:
        top = exceptions[-1]
        line = first_line(top.value)
        title = f"{top.type or 'Error'}: {line}" if line else top.type or "Error"
    else:
        title = first_line(message) or "<unlabeled event>"
    return truncate(title, MAX_TITLE)


def culprit(transaction: str | None, exceptions: tuple[ExceptionInfo, ...],
             stacktrace: tuple[Frame, ...]) -> str:
    """The transaction, else `module in function` of the most recent in-app frame (else the
    most recent frame) of the top-level exception, or of the nearest exception in its chain
    that has frames, or of the event's own stack trace."""
    if transaction:
        return truncate(transaction, MAX_NAME)
    frames = next((exc.frames for exc in reversed(exceptions) if exc.frames), stacktrace)
    if not frames:
        return ""
    frame = next((f for f in reversed(frames) if f.in_app), frames[-1])
    location = frame.module or frame.filename or frame.abs_path
    if not location:
        return ""
    return truncate(f"{location} in {frame.function}" if frame.function else location, MAX_NAME)
