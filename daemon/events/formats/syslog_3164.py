"""Dates and headers of BSD syslog (RFC 3164), and of the messages that merely start like it.

RFC 3164 described what BSD daemons happened to send rather than a format, so its senders
disagree: a date without year or zone, an RFC 3339 date in the same place (rsyslog's forward
format, Go's log/syslog), a hostname that senders writing to a local socket leave out, a tag
with or without a pid. Each variant is recognized by its shape; text that matches none stays
the message, whole. Nothing here raises: a sender's odd header must not cost its message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo

MAX_FIELD = 255
_MONTHS = {name: number for number, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_BSD_DATE = re.compile(
    r"([A-Za-z]{3}) {1,2}([0-9]{1,2})(?: ([0-9]{4}))? ([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?= |$)")
_ISO_DATE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:[.,]([0-9]{1,9}))?"
    r"(?:(?P<utc>[Zz])|(?P<sign>[+-])(?P<hours>[0-9]{2}):?(?P<minutes>[0-9]{2}))?")
_ISO_MAX = 40
_TAG = re.compile(r"([^\s:\[\]]{1,128})(?:\[([^\s\[\]]{0,64})\])?:")
_SPACES = re.compile(" *")
# Words a log line starts with that are no program name: "ERROR: disk full" has no ident.
_LEVEL_WORDS = frozenset({
    "alert", "crit", "critical", "debug", "emerg", "emergency", "err", "error", "exception",
    "fatal", "info", "information", "note", "notice", "panic", "severe", "trace", "warn",
    "warning"})


@dataclass(frozen=True, slots=True)
class Header:
    """What precedes the message; `message` is the rest of the datagram, untrimmed."""

    timestamp: float | None
    hostname: str | None
    app_name: str | None
    proc_id: str | None
    message: str


def parse_iso(token: str, tz: tzinfo) -> float | None:
    """Epoch seconds of an RFC 3339 date (`tz` when it has no offset), or None when the token
    is no such date or names an impossible or pre-1970 moment."""
    match = _ISO_DATE.fullmatch(token)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction = match.groups()[:7]
    zone = tz
    if match["utc"] is not None:
        zone = UTC
    elif match["sign"] is not None:
        offset = timedelta(hours=int(match["hours"]), minutes=int(match["minutes"]))
        if offset >= timedelta(hours=24):
            return None
        zone = timezone(-offset if match["sign"] == "-" else offset)
    return _epoch((int(year), int(month), int(day), int(hour), int(minute), int(second)),
                  fraction, zone)


def parse_header(body: str, received: float, tz: tzinfo) -> Header | None:
    """The header of `body` (a datagram after its PRI) when it starts with a BSD or RFC 3339
    date, else None. A BSD date without a year takes the year that puts it closest to
    `received`, so December messages that arrive in January land in the right year."""
    pos = _SPACES.match(body).end()
    bsd = _BSD_DATE.match(body, pos)
    if bsd is not None and bsd[1].lower() in _MONTHS:
        timestamp = _bsd_epoch(bsd, received, tz)
        pos = bsd.end()
    else:
        end = _token_end(body, pos, _ISO_MAX)
        if end < 0 or _ISO_DATE.fullmatch(body, pos, end) is None:
            return None
        timestamp = parse_iso(body[pos:end], tz)
        pos = end
    pos = _SPACES.match(body, pos).end()
    end = _token_end(body, pos, MAX_FIELD)
    first = body[pos:end] if end >= 0 else ""
    if first.endswith(":") or "[" in first:
        tagged = split_tag(body, pos, bare=False)
        if tagged is not None:
            return Header(timestamp, None, *tagged)
    hostname = None
    if first:
        hostname = None if first == "-" else first
        pos = _SPACES.match(body, end).end()
    tagged = split_tag(body, pos, bare=False)
    if tagged is None:
        return Header(timestamp, hostname, None, None, body[pos:])
    return Header(timestamp, hostname, *tagged)


def split_tag(text: str, pos: int, *, bare: bool) -> tuple[str, str | None, str] | None:
    """(app name, pid, rest) when `text` continues at `pos` with `tag:` or `tag[pid]:`. In
    `bare` text (no date before it) only a plausible program name counts, followed by a space:
    "myapp: started" names its sender, "ERROR: disk full" and "WARNING:root:x" do not."""
    match = _TAG.match(text, pos)
    if match is None:
        return None
    name, rest = match[1], match.end()
    if bare and (not name[0].isalpha() or name.lower() in _LEVEL_WORDS
                 or (rest < len(text) and text[rest] != " ")):
        return None
    return name, match[2] or None, text[rest:]


def _token_end(text: str, pos: int, limit: int) -> int:
    """Index of the space ending the token at `pos`, or -1 when it is longer than `limit`."""
    end = text.find(" ", pos, pos + limit + 1)
    if end >= 0:
        return end
    return len(text) if len(text) - pos <= limit else -1


def _bsd_epoch(match: re.Match[str], received: float, tz: tzinfo) -> float | None:
    month = _MONTHS[match[1].lower()]
    day, hour, minute, second = (int(match[index]) for index in (2, 4, 5, 6))
    if match[3] is not None:
        return _epoch((int(match[3]), month, day, hour, minute, second), match[7], tz)
    try:
        year = datetime.fromtimestamp(received, tz).year
    except (ValueError, OverflowError, OSError):
        return None
    candidates = [moment for moment in (
        _epoch((candidate, month, day, hour, minute, second), match[7], tz)
        for candidate in (year - 1, year, year + 1)) if moment is not None]
    return min(candidates, key=lambda moment: abs(moment - received), default=None)


def _epoch(parts: tuple[int, int, int, int, int, int], fraction: str | None,
           zone: tzinfo) -> float | None:
    """A leap second counts as the second before it; pre-1970 dates come from devices whose
    clock was never set and are dropped, as the normalizer would reject them."""
    year, month, day, hour, minute, second = parts
    try:
        moment = datetime(year, month, day, hour, minute, min(second, 59),
                          tzinfo=zone).timestamp()
    except (ValueError, OverflowError):
        return None
    moment += float(f"0.{fraction}") if fraction else 0.0
    return moment if moment >= 0 else None
