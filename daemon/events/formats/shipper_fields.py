"""The field names log shippers use, and the values they put in them.

Vector, Fluent Bit, Logstash and the JSON formatters behind them (ECS, python-json-logger,
pino, logback) each spell a level or a timestamp their own way; these aliases and
coercions are what lets `daemon.events.formats.shipper` accept all of them without configuration.

Field mapping (the first field present wins; `a.b` matches a flat `"a.b"` key and a nested
`{"a": {"b": ...}}` object alike; null and "" count as absent):

| Sentry field | Record fields |
|---|---|
| `message`, `logentry.formatted` | `message`, `msg`, `log`, `short_message`, `text` |
| `level` (absent: `info`) | `level`, `severity`, `log.level`, `levelname`, `loglevel` |
| `timestamp` | `timestamp`, `@timestamp`, `time`, `ts` |
| `logger` | `logger`, `logger_name`, `log.logger` |
| `release` | `release`, `version`, `service.version` |
| `environment` | `environment`, `env`, `deployment.environment` |
| `server_name` | `host`, `hostname`, `host.name` |
| `tags` | `tags` (object of scalars, stringified; an array goes to `extra`) |
| `tags.service` | `service`, `service.name` (unless `tags` has `service`) |
| `event_id` | `event_id` (32 hex digits or a dashed UUID; else it goes to `extra`) |
| `fingerprint` | `fingerprint` (array of strings) |
| `exception` | `exception` as Sentry's `{"values": [...]}` |
| exception type | `exception.type`, `error.type`, `err.type`, `exc_type` |
| exception value | `exception.value`, `exception.message`, `error.message`, `err.message`, |
| | `exc_value` |
| exception module | `exception.module` |
| exception trace | `exception`, `exception.stacktrace`, `stacktrace`, `stack_trace`, `stack`, |
| | `exc_info`, `traceback`, `error.stack_trace`, `error.stack`, `err.stack`, |
| | `full_message`; failing all of those, a trace inside the message |
| `platform` | `python`, `java` or `node` after a trace of that runtime, else `other` |
| `extra` | every other field: at most 100, each cut to 16 KiB of JSON |

- Levels: names in any case (emerg, emergency, alert, crit, critical, fatal → fatal; err,
  error → error; warn, warning → warning; notice, info, informational → info; debug, trace →
  debug), syslog severities 0-7 (0-2 fatal, 3 error, 4 warning, 5-6 info, 7 debug) and
  Python levels 10-50 (a custom level counts as the named level below it).
- Timestamps: RFC 3339 (UTC without an offset) or epoch seconds; a number above 1e11 is
  milliseconds, above 1e14 microseconds, above 1e17 nanoseconds.
- Traces: Python, Java and Node.js text as printed (see daemon.events.formats.traceback_text), an
  array of its lines, or an array of Sentry frames (oldest call first). An explicit type or
  value overrides the one in the trace; a string `exception` that is no trace is the value.
- A record needs a message or an exception; anything else wrongly typed is rejected with a
  message naming the field.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

MESSAGE = ("message", "msg", "log", "short_message", "text")
LEVEL = ("level", "severity", "log.level", "levelname", "loglevel")
TIMESTAMP = ("timestamp", "@timestamp", "time", "ts")
LOGGER = ("logger", "logger_name", "log.logger")
RELEASE = ("release", "version", "service.version")
ENVIRONMENT = ("environment", "env", "deployment.environment")
SERVER_NAME = ("host", "hostname", "host.name")
SERVICE = ("service", "service.name")
EXCEPTION_TYPE = ("exception.type", "error.type", "err.type", "exc_type")
EXCEPTION_VALUE = ("exception.value", "exception.message", "error.message", "err.message",
                   "exc_value")
EXCEPTION_MODULE = ("exception.module",)
STACK = ("exception", "exception.stacktrace", "stacktrace", "stack_trace", "stack", "exc_info",
         "traceback", "error.stack_trace", "error.stack", "err.stack", "full_message")

# A dict under one of these names is an ECS-style namespace ({"log": {"level": ...}}), not a
# wrongly typed value: `log` is also the message field of Docker and Fluent Bit records.
NAMESPACES = frozenset(
    alias.partition(".")[0]
    for aliases in (MESSAGE, LEVEL, TIMESTAMP, LOGGER, RELEASE, ENVIRONMENT, SERVER_NAME,
                    SERVICE, EXCEPTION_TYPE, EXCEPTION_VALUE, EXCEPTION_MODULE, STACK)
    for alias in aliases if "." in alias)

LEVELS = ("debug", "info", "warning", "error", "fatal")
_LEVEL_NAMES = {
    "emerg": "fatal", "emergency": "fatal", "alert": "fatal", "crit": "fatal",
    "critical": "fatal", "fatal": "fatal", "err": "error", "error": "error",
    "warn": "warning", "warning": "warning", "notice": "info", "info": "info",
    "informational": "info", "debug": "debug", "trace": "debug",
}
_SYSLOG_LEVELS = ("fatal", "fatal", "fatal", "error", "warning", "info", "info", "debug")
_PYTHON_LEVELS = ((50, "fatal"), (40, "error"), (30, "warning"), (20, "info"))
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9})\d*)?"
    r"\s*(?:(?P<utc>[Zz])|(?P<sign>[+-])(?P<hours>\d{2}):?(?P<minutes>\d{2}))?")
_EPOCH = re.compile(r"\d{1,20}(?:\.\d{0,20})?")
Path = tuple[str, ...]


class ShipperRecordError(ValueError):
    """A record that cannot become an event; the message names the field and the problem."""


def kind(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def level_at_least(level: str, minimum: str) -> bool:
    """Whether `level` passes a `min_level` filter; both must be one of LEVELS."""
    for name in (level, minimum):
        if name not in LEVELS:
            raise ValueError(f"unknown level {name!r} (expected one of {', '.join(LEVELS)})")
    return LEVELS.index(level) >= LEVELS.index(minimum)


def parse_level(field: str, value: Any) -> str:
    """A Sentry level from a level name (any case), a syslog severity 0-7 or a Python
    logging number (10-50, custom levels rounded down to the nearest named one)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ShipperRecordError(f"{field}: expected a string or number, got {kind(value)}")
    if isinstance(value, str):
        name = value.strip().lower()
        if name in _LEVEL_NAMES:
            return _LEVEL_NAMES[name]
        if not name.isdigit() or len(name) > 9:
            raise ShipperRecordError(
                f"{field}: unknown level {value!r} (expected a level name, a syslog "
                "severity 0-7 or a Python logging level)")
        value = int(name)
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise ShipperRecordError(f"{field}: {value!r} is not a syslog or Python logging level")
    number = int(value)
    if number < len(_SYSLOG_LEVELS):
        return _SYSLOG_LEVELS[number]
    return next((name for floor, name in _PYTHON_LEVELS if number >= floor), "debug")


def parse_timestamp(field: str, value: Any) -> float:
    """Epoch seconds from an RFC 3339 date (UTC when it has no offset) or an epoch number
    in seconds, milliseconds (> 1e11), microseconds (> 1e14) or nanoseconds (> 1e17)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ShipperRecordError(f"{field}: expected a string or number, got {kind(value)}")
    if isinstance(value, str):
        text = value.strip()
        if _EPOCH.fullmatch(text):
            return _scale_epoch(field, float(text))
        return _parse_rfc3339(field, text)
    return _scale_epoch(field, float(value))


def _scale_epoch(field: str, seconds: float) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ShipperRecordError(f"{field}: {seconds!r} is not an epoch time")
    for threshold, divisor in ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3)):
        if seconds > threshold:
            return seconds / divisor
    return seconds


def _parse_rfc3339(field: str, text: str) -> float:
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ShipperRecordError(f"{field}: {text[:64]!r} is not an RFC 3339 date or epoch time")
    year, month, day, hour, minute, second, fraction = match.groups()[:7]
    try:
        zone = UTC
        if match["sign"] is not None:
            offset = timedelta(hours=int(match["hours"]), minutes=int(match["minutes"]))
            zone = timezone(-offset if match["sign"] == "-" else offset)
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute),
                          int(second), tzinfo=zone)
    except ValueError as exc:
        raise ShipperRecordError(f"{field}: {text!r} is not a valid date ({exc})") from None
    return moment.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


def text_value(field: str, value: Any) -> str:
    """A string field; numbers are accepted as their JSON text (release 1.2)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ShipperRecordError(f"{field}: expected a string, got {kind(value)}")


def lookup(record: dict[str, Any], name: str) -> tuple[Any, Path] | None:
    """The value under a flat or nested dotted name, and the path it was found at."""
    if name in record:
        return record[name], (name,)
    head, dot, rest = name.partition(".")
    inner = record.get(head) if dot else None
    if isinstance(inner, dict):
        found = lookup(inner, rest)
        if found is not None:
            return found[0], (head, *found[1])
    return None


def first(record: dict[str, Any], aliases: tuple[str, ...], used: list[Path]
          ) -> tuple[str, Any] | None:
    """(alias, value) of the first alias present, its path appended to `used` so the field
    stays out of `extra`; null, "" and namespaces count as absent."""
    for alias in aliases:
        found = lookup(record, alias)
        if found is None or found[0] is None or found[0] == "":
            continue
        if isinstance(found[0], dict) and alias in NAMESPACES:
            continue
        used.append(found[1])
        return alias, found[0]
    return None


def first_text(record: dict[str, Any], aliases: tuple[str, ...], used: list[Path]
               ) -> str | None:
    """`first` for a string field."""
    found = first(record, aliases, used)
    return None if found is None else text_value(found[0], found[1])
