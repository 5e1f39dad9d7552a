"""Syslog datagrams as Sentry events, for the UDP ingest.

Appliances, containers and daemons that will never embed a Sentry SDK still log to syslog,
each in its own dialect: util-linux `logger`, rsyslog's templates, Docker's syslog driver,
Python's SysLogHandler. `parse` recognizes every dialect by its shape, with no per-sender
configuration; `to_sentry_event` maps the result onto what sentry-sdk sends (a traceback in
the text becomes exception values), so one normalizer downstream serves every source.

A datagram is untrusted: every scan is linear, header fields keep 255 characters, structured
data 64 elements of 64 params of 16 Ki characters, the message 64 KiB. The message is decoded
leniently (invalid UTF-8 becomes U+FFFD): RFC 5424 allows any charset there unless a BOM says
UTF-8, old RFC 3164 devices send Latin-1, and rejecting an error report over one byte would
lose the error. The RFC 5424 header and structured data are grammar rather than prose, and
their values become tags and keys, so invalid UTF-8 there rejects the datagram.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, tzinfo
from typing import Any, Literal

from daemon.events.formats import syslog_3164 as bsd
from daemon.events.formats.traceback_text import ParsedTrace, parse_trace

__all__ = ["FACILITIES", "MAX_MESSAGE_BYTES", "MAX_SD_ELEMENTS", "MAX_SD_PARAMS", "MAX_SD_VALUE",
           "Format", "SyslogError", "SyslogMessage", "parse", "to_sentry_event"]

MAX_MESSAGE_BYTES = 64 * 1024
MAX_SD_ELEMENTS = 64
MAX_SD_PARAMS = 64
MAX_SD_VALUE = 16 * 1024  # characters, as the shipper bounds a value in `extra`
FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
              "authpriv", "ftp", "ntp", "security", "console", "solaris-cron",
              *(f"local{number}" for number in range(8)))
_LEVELS = ("fatal", "fatal", "fatal", "error", "warning", "info", "info", "debug")
_HEADER_FIELDS = ("TIMESTAMP", "HOSTNAME", "APP-NAME", "PROCID", "MSGID")
_DIGITS = "0123456789"
_MAX_PRI_DIGITS = 10
_RFC5424_START = re.compile(r" *(?:-(?: |$)|[0-9]{4}-)")  # VERSION "1" is followed by a date
_SPACES = re.compile(" *")
_SD_NAME = re.compile(r'[^ \]="]*')
_SD_VALUE_CHUNK = re.compile(r'[^"\\]*')
_SD_ESCAPED = ('"', "\\", "]")
_INVALID_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a bad byte
_PY_HEADER = "Traceback (most recent call last):"
_RSYSLOG_LF, _RSYSLOG_TAB = "#012", "#011"  # rsyslog's EscapeControlCharactersOnReceive
_FRAME_LOOKBACK = 50

Format = Literal["rfc5424", "rfc3164", "bare"]


class SyslogError(ValueError):
    """A datagram that cannot become a message; says what is wrong and at which byte."""


@dataclass(frozen=True, slots=True)
class SyslogMessage:
    """One datagram. `facility` and `severity` are None without a PRI, `timestamp` (epoch
    seconds) when the sender gave none that parses; NILVALUE fields are None. `format` is
    "rfc5424", "rfc3164" (a BSD or RFC 3339 date after the PRI) or "bare" (neither)."""

    facility: int | None
    severity: int | None
    timestamp: float | None
    hostname: str | None
    app_name: str | None
    proc_id: str | None
    msg_id: str | None
    structured_data: dict[str, dict[str, str]]
    message: str
    format: Format


def parse(data: bytes, *, received: float, tz: tzinfo = UTC) -> SyslogMessage:
    """The message in one datagram. `received` (epoch seconds) picks the year of a BSD date;
    `tz` is the zone of dates sent without one. Trailing CR, LF and NUL are framing, not
    text. A datagram without PRI is all message. Raises SyslogError, nothing else."""
    text = data.decode("utf-8", "surrogateescape").rstrip("\r\n\x00")
    start = 1 if text.startswith("\ufeff") else 0
    if not text[start:].strip():
        raise SyslogError("syslog: empty message")
    if text[start] != "<":
        return _build(None, "bare", text[start:], trim=False)
    pri, pos = _pri(text, start)
    if text.startswith("1 ", pos) and _RFC5424_START.match(text, pos + 2):
        return _parse_5424(text, pos + 2, pri, tz)
    body = text[pos:]
    header = bsd.parse_header(body, received, tz)
    if header is not None:
        return _build(pri, "rfc3164", header.message, timestamp=header.timestamp,
                      hostname=_clean(header.hostname), app_name=_clean(header.app_name),
                      proc_id=_clean(header.proc_id))
    ident = bsd.split_tag(body, 0, bare=True)
    if ident is None:
        return _build(pri, "bare", body, trim=False)
    return _build(pri, "bare", ident[2], app_name=_clean(ident[0]), proc_id=_clean(ident[1]))


def to_sentry_event(message: SyslogMessage) -> dict[str, Any]:
    """The Sentry event for a parsed message: severity → level, app name → logger, hostname
    → server_name, facility, app name, host, proc id and msg id → tags, structured data →
    extra as `sd.<id>.<param>`. A Python, Java or Node.js trace in the text becomes the
    exception (and the platform); the lines before it stay the message."""
    severity = message.severity
    level = _LEVELS[severity] if severity is not None and 0 <= severity < 8 else "info"
    event: dict[str, Any] = {"platform": "other", "level": level}
    text, trace = _find_trace(message.message)
    if trace is not None:
        event["platform"] = trace.platform
        event["exception"] = {"values": trace.values}
        text = _before_trace(text, trace)
    if text:
        event["message"] = text
    if message.timestamp is not None:
        event["timestamp"] = message.timestamp
    if message.app_name:
        event["logger"] = message.app_name
    if message.hostname:
        event["server_name"] = message.hostname
    tags: dict[str, str] = {}
    facility = message.facility
    if facility is not None and 0 <= facility < len(FACILITIES):
        tags["facility"] = FACILITIES[facility]
    for key, value in (("app_name", message.app_name), ("host", message.hostname),
                       ("proc_id", message.proc_id), ("msg_id", message.msg_id)):
        if value:
            tags[key] = value
    if tags:
        event["tags"] = tags
    extra = {f"sd.{sd_id}.{name}": value
             for sd_id, params in message.structured_data.items()
             for name, value in params.items()}
    if extra:
        event["extra"] = extra
    return event


def _byte(text: str, index: int) -> int:
    """The datagram offset of `text[index]`: every undecodable byte is one character."""
    return len(text[:index].encode("utf-8", "surrogateescape"))


def _found(text: str, index: int) -> str:
    return repr(text[index]) if index < len(text) else "the end of the datagram"


def _pri(text: str, start: int) -> tuple[int, int]:
    """The PRI opening at `text[start]` ('<') and the index after its '>'."""
    end = start + 1
    while end < len(text) and end - start <= _MAX_PRI_DIGITS and text[end] in _DIGITS:
        end += 1
    if end == start + 1:
        raise SyslogError(f"syslog: PRI expects digits after '<', found {_found(text, end)} "
                          f"at byte {_byte(text, end)}")
    if end == len(text) or text[end] != ">":
        raise SyslogError(f"syslog: PRI is not closed by '>', found {_found(text, end)} "
                          f"at byte {_byte(text, end)}")
    pri = int(text[start + 1:end])
    if pri > 191:
        raise SyslogError(f"syslog: PRI {pri} is out of range (0-191)")
    return pri, end + 1


def _parse_5424(text: str, pos: int, pri: int, tz: tzinfo) -> SyslogMessage:
    """RFC 5424 after `<PRI>1 `. Runs of spaces count as one; a missing SD is tolerated."""
    fields: list[str | None] = []
    for name in _HEADER_FIELDS:
        pos = _SPACES.match(text, pos).end()
        if pos == len(text):
            raise SyslogError(f"syslog: rfc5424 header ends before {name} at byte "
                              f"{_byte(text, pos)}")
        end = text.find(" ", pos)
        end = len(text) if end < 0 else end
        bad = _INVALID_BYTE.search(text, pos, end)
        if bad is not None:
            raise SyslogError(f"syslog: invalid UTF-8 at byte {_byte(text, bad.start())}")
        field = text[pos:end]
        fields.append(None if field == "-" else field[:bsd.MAX_FIELD])
        pos = end
    stamp, hostname, app_name, proc_id, msg_id = fields
    elements, pos = _structured_data(text, _SPACES.match(text, pos).end())
    timestamp = bsd.parse_iso(stamp, tz) if stamp else None
    return _build(pri, "rfc5424", text[pos:], timestamp=timestamp, hostname=hostname,
                  app_name=app_name, proc_id=proc_id, msg_id=msg_id, structured_data=elements)


def _structured_data(text: str, pos: int) -> tuple[dict[str, dict[str, str]], int]:
    """SD elements from `pos`, and where MSG starts. An element repeating an SD-ID adds the
    params the first lacked; a repeated param keeps its first value."""
    if text.startswith("-", pos) and (pos + 1 == len(text) or text[pos + 1] == " "):
        return {}, pos + 2
    elements: dict[str, dict[str, str]] = {}
    count = 0
    while text.startswith("[", pos):
        sd_id, params, pos = _sd_element(text, pos)
        count += 1
        if count > MAX_SD_ELEMENTS:
            continue
        kept = elements.setdefault(sd_id, {})
        for name, value in params:
            if len(kept) < MAX_SD_PARAMS:
                kept.setdefault(name, value)
    return elements, (pos + 1 if text.startswith(" ", pos) else pos)


def _sd_element(text: str, start: int) -> tuple[str, list[tuple[str, str]], int]:
    """One `[SD-ID name="value" ...]`: its id, (at most 64) params and the index after it."""
    pos = _SD_NAME.match(text, start + 1).end()
    sd_id = _sd_name(text, start + 1, pos, "SD-ID")
    params: list[tuple[str, str]] = []
    while True:
        if pos == len(text):
            raise SyslogError(f"syslog: structured data element at byte {_byte(text, start)} "
                              "is not closed by ']'")
        if text[pos] == "]":
            return sd_id, params, pos + 1
        if text[pos] != " ":
            raise SyslogError(f"syslog: structured data: expected ' ' or ']', found "
                              f"{_found(text, pos)} at byte {_byte(text, pos)}")
        pos = _SPACES.match(text, pos).end()
        if text.startswith("]", pos):
            continue
        end = _SD_NAME.match(text, pos).end()
        name = _sd_name(text, pos, end, "PARAM-NAME")
        if not text.startswith('="', end):
            raise SyslogError(f"syslog: structured data: expected '=\"' after PARAM-NAME, "
                              f"found {_found(text, end)} at byte {_byte(text, end)}")
        value, pos = _sd_value(text, end + 2)
        if len(params) < MAX_SD_PARAMS:
            params.append((name, value))


def _sd_name(text: str, start: int, end: int, what: str) -> str:
    if start == end:
        raise SyslogError(f"syslog: structured data: empty {what} at byte {_byte(text, start)}")
    bad = _INVALID_BYTE.search(text, start, end)
    if bad is not None:
        raise SyslogError(f"syslog: invalid UTF-8 at byte {_byte(text, bad.start())}")
    return text[start:end]


def _sd_value(text: str, start: int) -> tuple[str, int]:
    """A PARAM-VALUE after its opening quote, unescaped (`\\"`, `\\\\`, `\\]`; any other
    backslash is literal), and the index after its closing quote."""
    parts: list[str] = []
    pos = start
    while True:
        end = _SD_VALUE_CHUNK.match(text, pos).end()
        parts.append(text[pos:end])
        if end == len(text):
            raise SyslogError(f"syslog: structured data: PARAM-VALUE opened at byte "
                              f"{_byte(text, start - 1)} is not closed by '\"'")
        if text[end] == '"':
            bad = _INVALID_BYTE.search(text, start, end)
            if bad is not None:
                raise SyslogError(f"syslog: invalid UTF-8 at byte {_byte(text, bad.start())}")
            return "".join(parts)[:MAX_SD_VALUE], end + 1
        escaped = text[end + 1:end + 2]
        if escaped in _SD_ESCAPED:
            parts.append(escaped)
            pos = end + 2
        else:
            parts.append("\\")
            pos = end + 1


def _build(pri: int | None, fmt: Format, raw: str, *, trim: bool = True,
           timestamp: float | None = None, hostname: str | None = None,
           app_name: str | None = None, proc_id: str | None = None, msg_id: str | None = None,
           structured_data: dict[str, dict[str, str]] | None = None) -> SyslogMessage:
    message = _finish(raw, trim=trim)
    if not message.strip():
        raise SyslogError("syslog: empty message after the header")
    return SyslogMessage(
        facility=None if pri is None else pri >> 3, severity=None if pri is None else pri & 7,
        timestamp=timestamp, hostname=hostname, app_name=app_name, proc_id=proc_id,
        msg_id=msg_id, structured_data=structured_data or {}, message=message, format=fmt)


def _finish(raw: str, *, trim: bool) -> str:
    """The message text: undecodable bytes as U+FFFD, cut to 64 KiB of UTF-8 on a character
    boundary, without a BOM and, after a header (`trim`), without the spaces separating it."""
    text = raw[:MAX_MESSAGE_BYTES].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    encoded = text.encode()
    if len(encoded) > MAX_MESSAGE_BYTES:
        text = encoded[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore")  # drops a cut character
    return (text.lstrip(" ") if trim else text).removeprefix("\ufeff")


def _clean(value: str | None) -> str | None:
    """A header field with each undecodable byte as U+FFFD."""
    if not value:
        return None
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _find_trace(text: str) -> tuple[str, ParsedTrace | None]:
    """The trace in a message, and the text it was found in: rsyslog forwards a multi-line
    message with each newline as "#012", which is undone only when that reveals a trace."""
    if "\n" in text:
        return text, parse_trace(text)
    if _RSYSLOG_LF in text:
        unescaped = text.replace(_RSYSLOG_LF, "\n").replace(_RSYSLOG_TAB, "\t")
        trace = parse_trace(unescaped)
        if trace is not None:
            return unescaped, trace
    return text, None


def _before_trace(text: str, trace: ParsedTrace) -> str:
    """The lines before the trace: before a Python traceback's header, or before the
    exception line above the first Java or Node.js frame."""
    lines = text.split("\n")
    if trace.platform == "python":
        start = next((index for index, line in enumerate(lines) if _PY_HEADER in line), 0)
        return "\n".join(lines[:start]).rstrip()
    first = next((index for index, line in enumerate(lines)
                  if line.lstrip().startswith("at") and parse_trace(line) is not None), 0)
    outermost = trace.values[-1]
    module = outermost.get("module")
    name = f"{module}.{outermost.get('type')}" if module else str(outermost.get("type"))
    start = max(first - 1, 0)  # an unnamed exception's value is the line above its frames
    for index in range(first - 1, max(-1, first - 1 - _FRAME_LOOKBACK), -1):
        if name in lines[index]:
            start = index
            break
    return "\n".join(lines[:start]).rstrip()
