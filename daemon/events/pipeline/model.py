"""The shape of a normalized Sentry event: the Event, its exceptions and their frames, and
the error a payload that cannot be read raises. normalize.py builds them; eventtext.py,
fingerprint.py and facets.py read them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class InvalidEvent(ValueError):
    """The payload cannot be read as a Sentry event. The message is `field.path: problem`."""


@dataclass(frozen=True, slots=True)
class Frame:
    filename: str | None
    abs_path: str | None
    module: str | None
    function: str | None
    lineno: int | None
    in_app: bool | None
    context_line: str | None


@dataclass(frozen=True, slots=True)
class ExceptionInfo:
    type: str | None
    value: str | None
    module: str | None
    frames: tuple[Frame, ...]  # oldest call first, as Sentry orders them
    handled: bool | None


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str  # 32 lowercase hex digits
    timestamp: float  # epoch seconds
    level: str  # one of normalize.LEVELS
    platform: str
    logger: str | None
    message: str | None  # formatted
    message_template: str | None  # logentry.message, before its params were applied
    exceptions: tuple[ExceptionInfo, ...]  # the last one is the one raised at top level
    stacktrace: tuple[Frame, ...]  # top-level `stacktrace`, or the crashed/current thread's
    title: str
    culprit: str  # "" when nothing names a place
    transaction: str | None
    release: str | None
    environment: str | None
    server_name: str | None
    tags: tuple[tuple[str, str], ...]
    fingerprint: tuple[str, ...] | None
    payload: dict[str, Any] = field(compare=False, repr=False)
