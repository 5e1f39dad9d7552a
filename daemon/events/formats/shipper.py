"""Events from log shippers (Vector, Fluent Bit, Logstash http outputs), as Sentry events.

Shippers batch records in whatever framing their output is configured for, and name fields
after the logging library that wrote them. `split_records` accepts every framing so one bad
record never costs the rest of the batch; `to_sentry_event` maps the common field names onto
the shape sentry-sdk sends, so one normalizer downstream serves every source.

The field mapping, as a table, is the docstring of daemon.events.formats.shipper_fields.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from daemon.events.formats import shipper_fields as fields
from daemon.events.formats.shipper_fields import (
    LEVELS,
    ShipperRecordError,
    kind,
    level_at_least,
    parse_level,
    parse_timestamp,
    text_value,
)
from daemon.events.formats.traceback_text import parse_trace, split_type

__all__ = ["LEVELS", "Record", "ShipperBodyError", "ShipperRecordError", "level_at_least",
           "split_records", "to_sentry_event"]

MAX_RECORDS = 100_000
MAX_EXTRA_KEYS = 100
MAX_EXTRA_VALUE = 16 * 1024
_BOM = b"\xef\xbb\xbf"
_JSON_TOKEN = re.compile(r"[^ \t\r\n]")
_DECODER = json.JSONDecoder()
_HEX_ID = re.compile(r"[0-9a-f]{32}")


class ShipperBodyError(ValueError):
    """A request body with no usable record at all; the message says why."""


@dataclass(frozen=True, slots=True)
class Record:
    """One record of a batch: `value` when it parsed to an object, else `error`, which
    names the line (1-based) or array element (0-based) and the problem."""

    index: int
    value: dict[str, Any] | None
    error: str | None


def split_records(body: bytes, max_records: int = MAX_RECORDS) -> list[Record]:
    """Records of a shipper batch: a JSON object, a JSON array of objects, newline-delimited
    objects (CRLF and blank lines tolerated) or concatenated objects. Bad records come back
    as errors beside the good ones; ShipperBodyError only when nothing usable is found or the
    batch holds more than `max_records`."""
    data = body.removeprefix(_BOM)
    if not data.strip():
        raise ShipperBodyError("body: empty")
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        records = _split_lines(data, max_records)
    else:
        records = _from_document(document, max_records)
    if not any(record.value is not None for record in records):
        detail = records[0].error if records else "empty array"
        raise ShipperBodyError(f"body: no JSON object found ({detail})")
    return records


def _too_many(max_records: int) -> ShipperBodyError:
    return ShipperBodyError(f"body: more than {max_records} records")


def _record(index: int, value: Any, where: str) -> Record:
    if isinstance(value, dict):
        return Record(index, value, None)
    return Record(index, None, f"{where}: expected a JSON object, got {kind(value)}")


def _from_document(document: Any, max_records: int) -> list[Record]:
    if isinstance(document, dict):
        return [Record(0, document, None)]
    if not isinstance(document, list):
        raise ShipperBodyError(f"body: no JSON object found (got {kind(document)})")
    if len(document) > max_records:
        raise _too_many(max_records)
    return [_record(index, value, f"element {index}") for index, value in enumerate(document)]


def _split_lines(data: bytes, max_records: int) -> list[Record]:
    """Newline-delimited records; a line holding several concatenated objects yields each.
    When some bad line is a fragment of a larger object, the body is also read as a stream of
    multi-line objects: that reading wins when it has no error at all, else whichever reading
    finds more objects (then fewer errors)."""
    found: list[tuple[Any, str | None, str]] = []
    fragments = False
    for number, line in enumerate(data.split(b"\n"), 1):
        stripped = line.strip()
        if not stripped:
            continue
        try:
            found.append((orjson.loads(line), None, f"line {number}"))
        except orjson.JSONDecodeError as exc:
            whole = stripped.startswith(b"{") and stripped.endswith(b"}")
            scanned = _scan(line, number, max_records) if whole else []
            if len(scanned) < 2 or all(error for _, error, _ in scanned):
                scanned = [(None, f"line {number}: invalid JSON: {exc.msg} "
                                  f"(column {exc.colno})", "")]
                fragments = fragments or not whole
            found.extend(scanned)
        if len(found) > max_records and not fragments:
            raise _too_many(max_records)
        if len(found) > max_records:
            break
    if fragments:
        streamed = _scan(data, 1, max_records)
        objects = _objects(streamed)
        # A stream read without a single error wins outright: lines inside a
        # pretty-printed object ("{}" in a list) can parse on their own and outnumber it.
        clean = objects and all(error is None for _, error, _ in streamed)
        if clean or ((objects, -len(streamed)) > (_objects(found), -len(found)) and objects):
            found = streamed
        elif len(found) > max_records:
            raise _too_many(max_records)
    return [Record(index, None, error) if error else _record(index, value, where)
            for index, (value, error, where) in enumerate(found)]


def _objects(found: list[tuple[Any, str | None, str]]) -> int:
    return sum(1 for value, error, _ in found if error is None and isinstance(value, dict))


def _scan(data: bytes, first_line: int, max_records: int) -> list[tuple[Any, str | None, str]]:
    """JSON values one after another, found with the stdlib's scanner (which respects strings
    and escapes) and parsed with orjson so every framing yields identical values. Stops at
    the first malformed value: after it, no boundary can be trusted."""
    text = data.decode("utf-8", errors="surrogateescape")
    found: list[tuple[Any, str | None, str]] = []
    position = _skip_whitespace(text, 0)
    line = first_line + text.count("\n", 0, position)
    while position < len(text):
        try:
            _, end = _DECODER.raw_decode(text, position)
            value = orjson.loads(text[position:end])
        except orjson.JSONDecodeError as exc:
            found.append((None, f"line {line + exc.lineno - 1}: invalid JSON: {exc.msg}", ""))
            return found
        except json.JSONDecodeError as exc:
            found.append((None, f"line {first_line + exc.lineno - 1}: invalid JSON: {exc.msg} "
                                f"(column {exc.colno})", ""))
            return found
        except RecursionError:
            found.append((None, f"line {line}: invalid JSON: nested too deeply", ""))
            return found
        found.append((value, None, f"line {line}"))
        if len(found) > max_records:
            raise _too_many(max_records)
        following = _skip_whitespace(text, end)
        line += text.count("\n", position, following)
        position = following
    return found


def _skip_whitespace(text: str, position: int) -> int:
    token = _JSON_TOKEN.search(text, position)
    return len(text) if token is None else token.start()


def to_sentry_event(record: dict[str, Any]) -> dict[str, Any]:
    """The Sentry event for one shipper record, per the table in
    daemon.events.formats.shipper_fields. Raises ShipperRecordError for a wrongly typed
    field or a record with neither a message nor an exception."""
    if not isinstance(record, dict):
        raise ShipperRecordError(f"record: expected a JSON object, got {kind(record)}")
    used: list[fields.Path] = []
    message = fields.first_text(record, fields.MESSAGE, used)
    if message is not None:
        message = message.rstrip("\r\n") or None
    values, platform = _exception(record, used)
    if values is None and message is not None and "\n" in message:
        parsed = parse_trace(message)
        if parsed is not None:
            values, platform = parsed.values, parsed.platform
    if message is None and values is None:
        raise ShipperRecordError("record has no message, msg, log or exception field")
    event: dict[str, Any] = {"platform": platform, "level": "info"}
    found = fields.first(record, fields.LEVEL, used)
    if found is not None:
        event["level"] = parse_level(found[0], found[1])
    found = fields.first(record, fields.TIMESTAMP, used)
    if found is not None:
        event["timestamp"] = parse_timestamp(found[0], found[1])
    if message is not None:
        event["message"] = message
        event["logentry"] = {"formatted": message}
    if values is not None:
        event["exception"] = {"values": values}
    for key, aliases in (("logger", fields.LOGGER), ("release", fields.RELEASE),
                         ("environment", fields.ENVIRONMENT),
                         ("server_name", fields.SERVER_NAME)):
        text = fields.first_text(record, aliases, used)
        if text:
            event[key] = text
    _identity(record, event, used)
    tags = _tags(record, used)
    if tags:
        event["tags"] = tags
    extra = _extra(_without(record, used))
    if extra:
        event["extra"] = extra
    return event


def _exception(record: dict[str, Any], used: list[fields.Path]
               ) -> tuple[list[dict[str, Any]] | None, str]:
    """Exception values and platform from the exception fields, or (None, "other")."""
    native = record.get("exception")
    if isinstance(native, dict) and isinstance(native.get("values"), list):
        used.append(("exception",))
        return [value for value in native["values"] if isinstance(value, dict)], "other"
    name = fields.first_text(record, fields.EXCEPTION_TYPE, used)
    value = fields.first_text(record, fields.EXCEPTION_VALUE, used)
    module = fields.first_text(record, fields.EXCEPTION_MODULE, used)
    values: list[dict[str, Any]] | None = None
    platform = "other"
    for alias in fields.STACK:
        stack = _stack(record, alias)
        if stack is None:
            continue
        path, text, frames = stack
        parsed = parse_trace(text) if text is not None else None
        if parsed is not None:
            values, platform = parsed.values, parsed.platform
        elif frames is not None:
            values = [{"type": "Error", "value": "", "stacktrace": {"frames": frames}}]
        elif alias == "exception" and text is not None and name is None and value is None:
            values = [{"type": "Error", "value": text}]
        if values is not None:
            used.append(path)
            break
    if values is None and name is None and value is None:
        return None, platform
    values = values or [{"type": "Error", "value": ""}]
    top = values[-1]
    if name is not None:
        top.pop("module", None)
        split_module, top["type"] = split_type(name)
        if split_module is not None:
            top["module"] = split_module
    if module is not None:
        top["module"] = module
    if value is not None:
        top["value"] = value
    return values, platform


def _stack(record: dict[str, Any], alias: str
           ) -> tuple[fields.Path, str | None, list[dict[str, Any]] | None] | None:
    """A trace as text or as Sentry frames; None when the field is absent or unusable."""
    found = fields.lookup(record, alias)
    if found is None:
        return None
    stack, path = found
    if isinstance(stack, dict) and isinstance(stack.get("frames"), list):
        stack = stack["frames"]
    if isinstance(stack, list) and stack and all(isinstance(item, str) for item in stack):
        stack = "\n".join(stack)
    if isinstance(stack, str):
        return (path, stack, None) if stack.strip() else None
    if isinstance(stack, list):
        frames = [frame for frame in stack if isinstance(frame, dict)]
        return (path, None, frames) if frames else None
    return None


def _identity(record: dict[str, Any], event: dict[str, Any], used: list[fields.Path]) -> None:
    event_id = record.get("event_id")
    if isinstance(event_id, str) and _HEX_ID.fullmatch(event_id.replace("-", "").lower()):
        event["event_id"] = event_id.replace("-", "").lower()
        used.append(("event_id",))
    fingerprint = record.get("fingerprint")
    if fingerprint is None:
        return
    if not isinstance(fingerprint, list):
        raise ShipperRecordError(
            f"fingerprint: expected an array of strings, got {kind(fingerprint)}")
    event["fingerprint"] = [text_value(f"fingerprint[{index}]", part)
                            for index, part in enumerate(fingerprint)]
    used.append(("fingerprint",))


def _tags(record: dict[str, Any], used: list[fields.Path]) -> dict[str, str]:
    tags: dict[str, str] = {}
    raw = record.get("tags")
    if isinstance(raw, dict):
        used.append(("tags",))
        for key, value in raw.items():
            if value is None:
                continue
            if isinstance(value, bool):
                tags[str(key)] = "true" if value else "false"
            elif isinstance(value, str | int | float):
                tags[str(key)] = str(value)
            else:
                raise ShipperRecordError(
                    f"tags.{key}: expected a string, number or boolean, got {kind(value)}")
    elif raw is not None and not isinstance(raw, list):
        raise ShipperRecordError(f"tags: expected an object, got {kind(raw)}")
    found: list[fields.Path] = []
    service = fields.first_text(record, fields.SERVICE, found)
    if service and "service" not in tags:
        tags["service"] = service
        used.extend(found)
    return tags


def _without(record: dict[str, Any], used: list[fields.Path]) -> dict[str, Any]:
    """The record minus the fields mapped elsewhere, keeping the rest of a namespace."""
    remaining: dict[str, Any] = {}
    for key, value in record.items():
        below = [path[1:] for path in used if path[0] == key]
        if () in below:
            continue
        if below and isinstance(value, dict):
            rest = _without(value, below)
            if rest:
                remaining[key] = rest
        else:
            remaining[key] = value
    return remaining


def _extra(remaining: dict[str, Any]) -> dict[str, Any]:
    return dict(_bounded(item) for item in itertools.islice(remaining.items(), MAX_EXTRA_KEYS))


def _bounded(item: tuple[str, Any]) -> tuple[str, Any]:
    key, value = item
    try:
        size = len(orjson.dumps(value))
    except TypeError:
        value = repr(value)
        size = len(value.encode("utf-8", "surrogatepass"))
    if size <= MAX_EXTRA_VALUE:
        return key, value
    if not isinstance(value, str):
        value = orjson.dumps(value).decode()
    cut = value.encode("utf-8", "surrogatepass")[:MAX_EXTRA_VALUE]
    return key, cut.decode("utf-8", "ignore")

