"""A Sentry event payload reduced to the fields egen groups, stores and shows.

SDKs of every language and age send events, so the rules follow Relay's: unknown keys are
ignored, alternative shapes are accepted (`exception` as an object or a bare list, `message`
as a string or an object, tags as an object or pairs, timestamps as numbers or RFC 3339),
and overlong strings are truncated. A value of a plainly wrong type rejects the event with a
message naming the field, so a broken sender is noticed instead of filling issues with
blanks. The original payload travels along untouched for the store.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from daemon.events.pipeline.eventtext import (
    MAX_NAME,
    culprit,
    format_message,
    huge,
    title,
    truncate,
)
from daemon.events.pipeline.model import Event, ExceptionInfo, Frame, InvalidEvent

LEVELS = ("debug", "info", "warning", "error", "fatal")
_LEVEL_ALIASES = {"warn": "warning", "critical": "fatal", "log": "info"}
EVENT_ID = re.compile(r"[0-9a-f]{8}(-?)[0-9a-f]{4}\1[0-9a-f]{4}\1[0-9a-f]{4}\1[0-9a-f]{12}",
                       re.IGNORECASE)
_FRAME_STRINGS = ("filename", "abs_path", "module", "function", "context_line")
_EPOCH = re.compile(r"\s*\d+(?:\.\d*)?\s*")

# Length caps in characters, as Relay trims them.
MAX_SHORT = 64  # logger, platform, environment
MAX_TEXT = 8192  # messages, exception values
MAX_FIELD = 1024  # exception types and modules, frame fields
MAX_FRAMES = 250  # per stack trace; the middle of a deeper one is dropped
MAX_EXCEPTIONS = 50  # per chain; the outermost ones are kept
MAX_FUTURE = 60.0  # seconds a timestamp may lie ahead of its arrival before it is distrusted


def normalize_event(data: dict[str, Any], *, received: float) -> Event:
    """The Event for one `event` item. `received` (epoch seconds) stands in for a missing
    timestamp and for one implausibly far in the future. Raises InvalidEvent, nothing else."""
    if not isinstance(data, dict):
        raise _wrong("event", "an object", data)
    exceptions = _exceptions(data.get("exception"))
    stacktrace = _event_stacktrace(data)
    message, template = _message(data)
    transaction = _string(data, "transaction", "", MAX_NAME)
    return Event(
        event_id=_event_id(data.get("event_id")),
        timestamp=_timestamp(data.get("timestamp"), received),
        level=_level(data.get("level")),
        platform=_string(data, "platform", "", MAX_SHORT) or "other",
        logger=_string(data, "logger", "", MAX_SHORT) or None,
        message=message,
        message_template=template,
        exceptions=exceptions,
        stacktrace=stacktrace,
        title=title(exceptions, message),
        culprit=culprit(transaction, exceptions, stacktrace),
        transaction=transaction or None,
        release=_lenient(data.get("release"), "release", MAX_NAME),
        environment=_lenient(data.get("environment"), "environment", MAX_SHORT),
        server_name=_lenient(data.get("server_name"), "server_name", MAX_NAME),
        tags=_tags(data.get("tags")),
        fingerprint=_fingerprint(data.get("fingerprint")),
        payload=data,
    )


def _describe(value: Any) -> str:
    """A wrong value as an error message shows it: short, in JSON's spelling."""
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "a list"
    if isinstance(value, str):
        return repr(truncate(value, 40))
    if huge(value):
        return "a huge integer"
    return json.dumps(value, default=repr)


def _wrong(path: str, expected: str, value: Any) -> InvalidEvent:
    return InvalidEvent(f"{path}: expected {expected}, got {_describe(value)}")


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _wrong(path, "an object", value)
    return value


def _string(obj: dict[str, Any], key: str, prefix: str, limit: int) -> str | None:
    """obj[key], a string or missing; `prefix` is obj's own path for the error message."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _wrong(f"{prefix}.{key}" if prefix else key, "a string", value)
    return truncate(value, limit)


def _lenient(value: Any, path: str, limit: int, *, objects: bool = False) -> str | None:
    """Relay's LenientString: numbers and booleans are accepted and spelled as JSON does;
    with `objects` (JsonLenientString) objects and lists too, as their JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, int | float) and not huge(value):
        text = json.dumps(value)
    elif objects and isinstance(value, dict | list):
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (ValueError, RecursionError):
            raise _wrong(path, "a string", value) from None
    else:
        raise _wrong(path, "a string", value)
    return truncate(text, limit) if text else None


def _event_id(value: Any) -> str:
    if value is None:
        return uuid.uuid4().hex
    if not isinstance(value, str) or not EVENT_ID.fullmatch(value):
        raise InvalidEvent(f"event_id: expected 32 hex digits, got {_describe(value)}")
    return value.replace("-", "").lower()


def _timestamp(value: Any, received: float) -> float:
    if value is None:
        return received
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _wrong("timestamp", "an RFC 3339 date or epoch seconds", value)
    try:
        if not isinstance(value, str) or _EPOCH.fullmatch(value):
            seconds = float(value)
        else:
            parsed = datetime.fromisoformat(value.strip())
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            seconds = parsed.timestamp()
    except (ValueError, OverflowError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise _wrong("timestamp", "an RFC 3339 date or epoch seconds", value)
    return received if seconds > received + MAX_FUTURE else seconds


def _level(value: Any) -> str:
    if value is None:
        return "error"
    if not isinstance(value, str):
        raise _wrong("level", "a string", value)
    name = value.strip().lower()
    name = _LEVEL_ALIASES.get(name, name)
    if name not in LEVELS:
        raise InvalidEvent(f"level: unknown level {_describe(value)}")
    return name


def _message(data: dict[str, Any]) -> tuple[str | None, str | None]:
    """(formatted message, template): logentry first, then the legacy `message` key."""
    formatted = template = params = None
    logentry = data.get("logentry")
    if logentry is not None:
        entry = _object(logentry, "logentry")
        formatted = _string(entry, "formatted", "logentry", MAX_TEXT)
        template = _string(entry, "message", "logentry", MAX_TEXT)
        params = entry.get("params")
    message = data.get("message")
    if isinstance(message, str):
        formatted = formatted or truncate(message, MAX_TEXT)
    elif isinstance(message, dict):
        formatted = formatted or _string(message, "formatted", "message", MAX_TEXT)
        if template is None:
            template = _string(message, "message", "message", MAX_TEXT)
            params = message.get("params")
    elif message is not None:
        raise _wrong("message", "a string or an object", message)
    if not formatted and template:
        formatted = truncate(format_message(template, params), MAX_TEXT)
    return formatted or None, template or None


def _values(value: Any, path: str, single_keys: tuple[str, ...]) -> tuple[list[Any], str]:
    """Sentry's `{"values": [...]}` wrapper, a bare list, or one bare item."""
    if isinstance(value, list):
        return value, path
    if not isinstance(value, dict):
        raise _wrong(path, "an object or a list", value)
    if "values" not in value:
        return ([value] if any(key in value for key in single_keys) else []), path
    values = value["values"]
    if values is None:
        return [], path
    if not isinstance(values, list):
        raise _wrong(f"{path}.values", "a list", values)
    return values, f"{path}.values"


def _exceptions(value: Any) -> tuple[ExceptionInfo, ...]:
    if value is None:
        return ()
    items, path = _values(value, "exception", ("type", "value", "stacktrace"))
    infos = [_exception(item, f"{path}[{index}]")
             for index, item in enumerate(items) if item is not None]
    return tuple(infos[-MAX_EXCEPTIONS:])


def _exception(value: Any, path: str) -> ExceptionInfo:
    obj = _object(value, path)
    handled = None
    mechanism = obj.get("mechanism")
    if mechanism is not None:
        handled = _object(mechanism, f"{path}.mechanism").get("handled")
        if handled is not None and not isinstance(handled, bool):
            raise _wrong(f"{path}.mechanism.handled", "true or false", handled)
    return ExceptionInfo(
        type=_string(obj, "type", path, MAX_FIELD),
        value=_lenient(obj.get("value"), f"{path}.value", MAX_TEXT, objects=True),
        module=_string(obj, "module", path, MAX_FIELD),
        frames=_frames(obj.get("stacktrace"), f"{path}.stacktrace"),
        handled=handled,
    )


def _frames(value: Any, path: str) -> tuple[Frame, ...]:
    if value is None:
        return ()
    raw = _object(value, path).get("frames")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _wrong(f"{path}.frames", "a list", raw)
    frames = [_plain_frame(item) or _frame(item, f"{path}.frames[{index}]")
              for index, item in enumerate(raw) if item is not None]
    if len(frames) > MAX_FRAMES:
        frames = frames[:MAX_FRAMES // 2] + frames[-(MAX_FRAMES // 2):]
    return tuple(frames)


def _plain_frame(obj: Any) -> Frame | None:
    """A frame as SDKs send nearly all of them (strings, an int line, a bool in_app), read
    without building the error path `_frame` needs; None means "let `_frame` look"."""
    if type(obj) is not dict:
        return None
    lineno = obj.get("lineno")
    in_app = obj.get("in_app")
    if (lineno is not None and (type(lineno) is not int or lineno < 0)) or (
            in_app is not None and type(in_app) is not bool):
        return None
    filename = obj.get("filename")
    abs_path = obj.get("abs_path")
    module = obj.get("module")
    function = obj.get("function")
    context_line = obj.get("context_line")
    for text in (filename, abs_path, module, function, context_line):
        if text is not None and (type(text) is not str or len(text) > MAX_FIELD):
            return None
    return Frame(filename, abs_path, module, function, lineno, in_app, context_line)


def _frame(value: Any, path: str) -> Frame:
    obj = _object(value, path)
    lineno = obj.get("lineno")
    if lineno is not None:
        if isinstance(lineno, bool) or not (
                isinstance(lineno, int) or (isinstance(lineno, float) and lineno.is_integer())):
            raise _wrong(f"{path}.lineno", "an integer", lineno)
        if lineno < 0:
            raise _wrong(f"{path}.lineno", "a non-negative integer", lineno)
        lineno = int(lineno)
    in_app = obj.get("in_app")
    if in_app is not None and not isinstance(in_app, bool):
        raise _wrong(f"{path}.in_app", "true or false", in_app)
    strings = {key: _string(obj, key, path, MAX_FIELD) for key in _FRAME_STRINGS}
    return Frame(lineno=lineno, in_app=in_app, **strings)


def _event_stacktrace(data: dict[str, Any]) -> tuple[Frame, ...]:
    """Frames not attached to an exception: `stacktrace`, else the thread that crashed, else
    the current one, else the first thread that has any."""
    if data.get("stacktrace") is not None:
        return _frames(data["stacktrace"], "stacktrace")
    if data.get("threads") is None:
        return ()
    items, path = _values(data["threads"], "threads", ("stacktrace",))
    best: tuple[int, tuple[Frame, ...]] = (3, ())
    for index, item in enumerate(items):
        if item is None:
            continue
        thread = _object(item, f"{path}[{index}]")
        frames = _frames(thread.get("stacktrace"), f"{path}[{index}].stacktrace")
        rank = 0 if thread.get("crashed") is True else 1 if thread.get("current") is True else 2
        if frames and rank < best[0]:
            best = (rank, frames)
    return best[1]


def _tags(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    pairs: list[tuple[Any, Any, str]] = []
    if isinstance(value, dict):
        pairs = [(key, item, f"tags.{truncate(str(key), 40)}") for key, item in value.items()]
    elif isinstance(value, list):
        for index, pair in enumerate(value):
            if pair is None:
                continue
            if not isinstance(pair, list) or len(pair) != 2:
                raise _wrong(f"tags[{index}]", "a [key, value] pair", pair)
            pairs.append((pair[0], pair[1], f"tags[{index}]"))
    else:
        raise _wrong("tags", "an object or a list of pairs", value)
    tags: dict[str, str] = {}
    for key, item, path in pairs:
        if not isinstance(key, str):
            raise _wrong(path, "a string key", key)
        text = _lenient(item, path, MAX_NAME)
        name = truncate(key.strip(), MAX_NAME)
        if text is not None and name:
            tags.setdefault(name, text)
    return tuple(tags.items())


def _fingerprint(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _wrong("fingerprint", "a list of strings", value)
    entries = [item if isinstance(item, str) else _lenient(item, f"fingerprint[{index}]", MAX_NAME)
               for index, item in enumerate(value) if item is not None]
    return tuple(truncate(entry or "", MAX_NAME) for entry in entries) or None
