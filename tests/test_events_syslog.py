"""Syslog datagrams, byte for byte as real senders emit them, parsed and mapped to events."""

from __future__ import annotations

import dataclasses
import logging
import logging.handlers
import socket
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.events.formats.shipper_fields import LEVELS
from daemon.events.formats.syslog import (
    FACILITIES,
    MAX_MESSAGE_BYTES,
    MAX_SD_ELEMENTS,
    MAX_SD_PARAMS,
    Format,
    SyslogError,
    SyslogMessage,
    parse,
    to_sentry_event,
)
from daemon.events.pipeline.normalize import normalize_event


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


RECEIVED = at("2026-11-25T13:30:00+00:00")


def expected(message: str, fmt: Format, *, pri: int | None = None, timestamp: float | None = None,
             hostname: str | None = None, app_name: str | None = None,
             proc_id: str | None = None, msg_id: str | None = None,
             structured_data: dict[str, dict[str, str]] | None = None) -> SyslogMessage:
    return SyslogMessage(
        facility=None if pri is None else pri >> 3, severity=None if pri is None else pri & 7,
        timestamp=timestamp, hostname=hostname, app_name=app_name, proc_id=proc_id,
        msg_id=msg_id, structured_data=structured_data or {}, message=message,
        format=fmt)


def assert_parsed(parsed: SyslogMessage, want: SyslogMessage) -> None:
    """Equal field by field, the timestamp to the microsecond (float sums may differ in the
    last bit from datetime's own arithmetic)."""
    assert dataclasses.replace(parsed, timestamp=None) == dataclasses.replace(want, timestamp=None)
    if want.timestamp is None:
        assert parsed.timestamp is None
    else:
        assert parsed.timestamp == pytest.approx(want.timestamp, abs=1e-6)


TIME_QUALITY = {"tzKnown": "1", "isSynced": "0"}

# (sender, datagram as it leaves the sender, what it parses to)
DATAGRAMS: list[tuple[str, bytes, SyslogMessage]] = [
    # util-linux logger --rfc5424 (the default with --server): TAG as APP-NAME, --id as PROCID.
    ("logger rfc5424",
     b'<11>1 2026-11-25T14:00:00.123456+01:00 myhost myapp 1234 - '
     b'[timeQuality tzKnown="1" isSynced="0"] message',
     expected("message", "rfc5424", pri=11, timestamp=at("2026-11-25T14:00:00.123456+01:00"),
              hostname="myhost", app_name="myapp", proc_id="1234",
              structured_data={"timeQuality": TIME_QUALITY})),
    ("logger rfc5424 synced clock, no --id",
     b'<13>1 2026-11-25T14:00:00.000042+01:00 myhost alice - - '
     b'[timeQuality tzKnown="1" isSynced="1" syncAccuracy="93500"] disk almost full',
     expected("disk almost full", "rfc5424", pri=13,
              timestamp=at("2026-11-25T14:00:00.000042+01:00"), hostname="myhost",
              app_name="alice", structured_data={"timeQuality": {
                  "tzKnown": "1", "isSynced": "1", "syncAccuracy": "93500"}})),
    ("logger rfc5424=notime,nohost with --msgid",
     b"<13>1 - - alice - audit - user logged in",
     expected("user logged in", "rfc5424", pri=13, app_name="alice", msg_id="audit")),
    ("logger rfc3164 to a server",
     b"<13>Nov  5 14:00:00 myhost alice: hello world",
     expected("hello world", "rfc3164", pri=13, timestamp=at("2026-11-05T14:00:00+00:00"),
              hostname="myhost", app_name="alice")),
    ("logger to a local socket, with -i",
     b"<13>Nov  5 14:00:00 alice[4321]: hello world",
     expected("hello world", "rfc3164", pri=13, timestamp=at("2026-11-05T14:00:00+00:00"),
              app_name="alice", proc_id="4321")),
    ("logger to a local socket",
     b"<13>Nov  5 14:00:00 alice: hello world",
     expected("hello world", "rfc3164", pri=13, timestamp=at("2026-11-05T14:00:00+00:00"),
              app_name="alice")),
    ("rsyslog RSYSLOG_TraditionalForwardFormat",
     b"<27>Nov 25 14:00:00 web1 myapp[1234]: database unreachable",
     expected("database unreachable", "rfc3164", pri=27,
              timestamp=at("2026-11-25T14:00:00+00:00"), hostname="web1", app_name="myapp",
              proc_id="1234")),
    ("rsyslog traditional, a tag with a slash",
     b"<22>Nov 25 14:00:00 mx1 postfix/smtpd[999]: connect from unknown[10.0.0.1]",
     expected("connect from unknown[10.0.0.1]", "rfc3164", pri=22,
              timestamp=at("2026-11-25T14:00:00+00:00"), hostname="mx1",
              app_name="postfix/smtpd", proc_id="999")),
    ("rsyslog RSYSLOG_ForwardFormat",
     b"<27>2026-11-25T14:00:00.123456+01:00 web1 myapp[1234]: database unreachable",
     expected("database unreachable", "rfc3164", pri=27,
              timestamp=at("2026-11-25T14:00:00.123456+01:00"), hostname="web1",
              app_name="myapp", proc_id="1234")),
    # %msg% keeps the space after the tag's colon, so MSG starts with one more space.
    ("rsyslog RSYSLOG_SyslogProtocol23Format",
     b"<27>1 2026-11-25T14:00:00.123456+01:00 web1 myapp 1234 - -  database unreachable\n",
     expected("database unreachable", "rfc5424", pri=27,
              timestamp=at("2026-11-25T14:00:00.123456+01:00"), hostname="web1",
              app_name="myapp", proc_id="1234")),
    ("docker syslog-format=rfc5424",
     b"<30>1 2026-11-25T14:00:00+01:00 dockerhost web 4242 web - GET / 200\n",
     expected("GET / 200", "rfc5424", pri=30, timestamp=at("2026-11-25T14:00:00+01:00"),
              hostname="dockerhost", app_name="web", proc_id="4242", msg_id="web")),
    ("docker syslog-format=rfc5424micro",
     b"<27>1 2026-11-25T14:00:00.123456Z dockerhost web 4242 web - panic: oops\n",
     expected("panic: oops", "rfc5424", pri=27, timestamp=at("2026-11-25T14:00:00.123456+00:00"),
              hostname="dockerhost", app_name="web", proc_id="4242", msg_id="web")),
    ("docker syslog-format=rfc3164",
     b"<30>Nov 25 14:00:00 dockerhost web[4242]: GET / 200\n",
     expected("GET / 200", "rfc3164", pri=30, timestamp=at("2026-11-25T14:00:00+00:00"),
              hostname="dockerhost", app_name="web", proc_id="4242")),
    ("docker without syslog-format (no hostname, tag = container id)",
     b"<27>Nov 25 14:00:00 3f2a1b0c9d8e[4242]: connection reset\n",
     expected("connection reset", "rfc3164", pri=27, timestamp=at("2026-11-25T14:00:00+00:00"),
              app_name="3f2a1b0c9d8e", proc_id="4242")),
    ("Go srslog DefaultFormatter (a space after PRI)",
     b"<30> 2026-11-25T14:00:00+01:00 dockerhost web[4242]: ready\n",
     expected("ready", "rfc3164", pri=30, timestamp=at("2026-11-25T14:00:00+01:00"),
              hostname="dockerhost", app_name="web", proc_id="4242")),
    ("Python SysLogHandler",
     b"<12>disk almost full\x00",
     expected("disk almost full", "bare", pri=12)),
    ("Python SysLogHandler with ident",
     b"<11>myapp: payment failed\x00",
     expected("payment failed", "bare", pri=11, app_name="myapp")),
    ("Python SysLogHandler with a pid in the ident",
     b"<11>myapp[77]: payment failed\x00",
     expected("payment failed", "bare", pri=11, app_name="myapp", proc_id="77")),
    ("Python SysLogHandler, a level name is no ident",
     b"<11>ERROR: disk full\x00",
     expected("ERROR: disk full", "bare", pri=11)),
    ("Python SysLogHandler with logging.BASIC_FORMAT",
     b"<12>WARNING:root:careful\x00",
     expected("WARNING:root:careful", "bare", pri=12)),
    ("no PRI",
     b"just a line\r\n",
     expected("just a line", "bare")),
    ("no PRI, a date is kept as text",
     b"Nov 25 14:00:00 web1 app: text\n",
     expected("Nov 25 14:00:00 web1 app: text", "bare")),
    ("rfc5424 with a BOM before MSG",
     b"<13>1 2026-11-25T14:00:00Z host app - - - \xef\xbb\xbfgr\xc3\xbc\xc3\x9fe",
     expected("grüße", "rfc5424", pri=13, timestamp=at("2026-11-25T14:00:00+00:00"),
              hostname="host", app_name="app")),
    ("rfc5424, every field NILVALUE",
     b"<13>1 - - - - - - hello",
     expected("hello", "rfc5424", pri=13)),
    ("rfc5424 without the SD field",
     b"<13>1 2026-11-25T14:00:00Z host app - - hello world",
     expected("hello world", "rfc5424", pri=13, timestamp=at("2026-11-25T14:00:00+00:00"),
              hostname="host", app_name="app")),
    ("rfc5424, escapes and several SD elements",
     b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 '
     b'[exampleSDID@32473 iut="3" eventSource="Appl\\"ication\\]" path="C:\\\\logs\\n"]'
     b'[examplePriority@32473 class="high"] An application event',
     expected("An application event", "rfc5424", pri=165,
              timestamp=at("2003-10-11T22:14:15.003+00:00"), hostname="mymachine.example.com",
              app_name="evntslog", msg_id="ID47", structured_data={
                  "exampleSDID@32473": {"iut": "3", "eventSource": 'Appl"ication]',
                                        "path": "C:\\logs\\n"},
                  "examplePriority@32473": {"class": "high"}})),
    ("rfc5424, a repeated SD-ID and param keep the first value",
     b'<13>1 - - - - - [a x="1" x="2"][a y="3"] m',
     expected("m", "rfc5424", pri=13, structured_data={"a": {"x": "1", "y": "3"}})),
    ("rfc5424, an impossible date",
     b"<13>1 2026-13-45T99:00:00Z host app - - - odd clock",
     expected("odd clock", "rfc5424", pri=13, hostname="host", app_name="app")),
    ("rfc5424, a date before 1970",
     b"<13>1 1969-12-31T23:59:59Z host app - - - unset clock",
     expected("unset clock", "rfc5424", pri=13, hostname="host", app_name="app")),
    ("rfc5424, Go's RFC3339Nano",
     b"<13>1 2026-11-25T14:00:00.123456789-05:00 host app - - - nano",
     expected("nano", "rfc5424", pri=13, timestamp=at("2026-11-25T14:00:00.123457-05:00"),
              hostname="host", app_name="app")),
    ("rfc5424, a leap second",
     b"<13>1 2016-12-31T23:59:60Z host app - - - leap",
     expected("leap", "rfc5424", pri=13, timestamp=at("2016-12-31T23:59:59+00:00"),
              hostname="host", app_name="app")),
    ("'1 ' not followed by a date is a bare message",
     b"<13>1 apple fell",
     expected("1 apple fell", "bare", pri=13)),
    ("rfc3164, an impossible date keeps its header",
     b"<13>Feb 30 14:00:00 host app: odd clock",
     expected("odd clock", "rfc3164", pri=13, hostname="host", app_name="app")),
    ("rfc3164 with a year",
     b"<13>Nov 25 2025 14:00:00 host app: x",
     expected("x", "rfc3164", pri=13, timestamp=at("2025-11-25T14:00:00+00:00"),
              hostname="host", app_name="app")),
    ("rfc3164 without a tag",
     b"<13>Nov 25 14:00:00 host Starting daemon",
     expected("Starting daemon", "rfc3164", pri=13, timestamp=at("2026-11-25T14:00:00+00:00"),
              hostname="host")),
    ("rfc3164, an IPv6 hostname in brackets",
     b"<13>Nov 25 14:00:00 [fe80::1] app: x",
     expected("x", "rfc3164", pri=13, timestamp=at("2026-11-25T14:00:00+00:00"),
              hostname="[fe80::1]", app_name="app")),
    ("rfc3164, NILVALUE hostname from logger",
     b"<13>Nov 25 14:00:00 - alice: x",
     expected("x", "rfc3164", pri=13, timestamp=at("2026-11-25T14:00:00+00:00"),
              app_name="alice")),
    ("rfc3164, Latin-1 text is kept with replacement characters",
     b"<13>Nov 25 14:00:00 host app: caf\xe9 ferm\xe9",
     expected("caf\ufffd ferm\ufffd", "rfc3164", pri=13,
              timestamp=at("2026-11-25T14:00:00+00:00"), hostname="host", app_name="app")),
    ("a BOM before the PRI",
     b"\xef\xbb\xbf<14>hello",
     expected("hello", "bare", pri=14)),
    ("PRI 0 and PRI 191",
     b"<191>debug line",
     expected("debug line", "bare", pri=191)),
]


@pytest.mark.parametrize(("datagram", "want"), [(d, w) for _, d, w in DATAGRAMS],
                         ids=[name for name, _, _ in DATAGRAMS])
def test_datagrams_as_senders_emit_them(datagram: bytes, want: SyslogMessage) -> None:
    assert_parsed(parse(datagram, received=RECEIVED), want)


ERRORS: list[tuple[bytes, str]] = [
    (b"", "syslog: empty message"),
    (b"\r\n", "syslog: empty message"),
    (b"\x00", "syslog: empty message"),
    (b"   \n", "syslog: empty message"),
    (b"<999>hello", "syslog: PRI 999 is out of range (0-191)"),
    (b"<192>hello", "syslog: PRI 192 is out of range (0-191)"),
    (b"<>hello", "syslog: PRI expects digits after '<', found '>' at byte 1"),
    (b"<html>", "syslog: PRI expects digits after '<', found 'h' at byte 1"),
    (b"<\xd9\xa3>x", "syslog: PRI expects digits after '<', found '\u0663' at byte 1"),
    (b"<13", "syslog: PRI is not closed by '>', found the end of the datagram at byte 3"),
    (b"<13x>hello", "syslog: PRI is not closed by '>', found 'x' at byte 3"),
    (b"<13>", "syslog: empty message after the header"),
    (b"<13>\x00", "syslog: empty message after the header"),
    (b"<13>Nov 25 14:00:00 host app: \n", "syslog: empty message after the header"),
    (b"<13>1 - - - - - [a x=\"1\"]", "syslog: empty message after the header"),
    (b"<12>myapp: \x00", "syslog: empty message after the header"),
    (b"<13>1 - - - - - - \xef\xbb\xbf", "syslog: empty message after the header"),
    (b"<13>1 2026-11-25T14:00:00Z host",
     "syslog: rfc5424 header ends before APP-NAME at byte 31"),
    (b"<13>1 - ", "syslog: rfc5424 header ends before HOSTNAME at byte 8"),
    (b"<13>1 - myhost.ab\xff app - - - x", "syslog: invalid UTF-8 at byte 17"),
    (b'<13>1 - - - - - [a x="\xc3"] m', "syslog: invalid UTF-8 at byte 22"),
    (b"<13>1 - - - - - [a\xff] m", "syslog: invalid UTF-8 at byte 18"),
    (b'<13>1 - - - - - [a x="1"',
     "syslog: structured data element at byte 16 is not closed by ']'"),
    (b'<13>1 - - - - - [a x="1] m',
     "syslog: structured data: PARAM-VALUE opened at byte 21 is not closed by '\"'"),
    (b"<13>1 - - - - - [] m", "syslog: structured data: empty SD-ID at byte 17"),
    (b'<13>1 - - - - - [a ="1"] m', "syslog: structured data: empty PARAM-NAME at byte 19"),
    (b"<13>1 - - - - - [a=1] m",
     "syslog: structured data: expected ' ' or ']', found '=' at byte 18"),
    (b"<13>1 - - - - - [a x=1] m",
     "syslog: structured data: expected '=\"' after PARAM-NAME, found '=' at byte 20"),
    (b'<13>1 - - - - - [a x="1" m',
     "syslog: structured data: expected '=\"' after PARAM-NAME, found the end of the "
     "datagram at byte 26"),
]


@pytest.mark.parametrize(("datagram", "message"), ERRORS)
def test_errors_say_what_and_where(datagram: bytes, message: str) -> None:
    with pytest.raises(SyslogError) as caught:
        parse(datagram, received=RECEIVED)
    assert str(caught.value) == message


def test_syslog_error_is_a_value_error() -> None:
    assert issubclass(SyslogError, ValueError)


@pytest.mark.parametrize(("received", "datagram", "when"), [
    ("2027-01-01T00:00:10+00:00", b"<13>Dec 31 23:59:58 h a: x", "2026-12-31T23:59:58+00:00"),
    ("2026-12-31T23:59:59+00:00", b"<13>Jan  1 00:00:01 h a: x", "2027-01-01T00:00:01+00:00"),
    ("2026-06-15T12:00:00+00:00", b"<13>Dec 24 10:00:00 h a: x", "2025-12-24T10:00:00+00:00"),
    ("2026-06-15T12:00:00+00:00", b"<13>Jun 15 11:00:00 h a: x", "2026-06-15T11:00:00+00:00"),
    ("2028-03-01T00:00:00+00:00", b"<13>Feb 29 12:00:00 h a: x", "2028-02-29T12:00:00+00:00"),
    ("2027-03-01T00:00:00+00:00", b"<13>Feb 29 12:00:00 h a: x", "2028-02-29T12:00:00+00:00"),
    ("2026-11-25T13:30:00+00:00", b"<13>nov 25 14:00:00.250 h a: x",
     "2026-11-25T14:00:00.25+00:00"),
], ids=["december in january", "january in december", "half a year back",
        "same day", "leap day", "leap day of the next year", "lowercase month, millis"])
def test_bsd_date_takes_the_year_closest_to_arrival(received: str, datagram: bytes,
                                                     when: str) -> None:
    parsed = parse(datagram, received=at(received))
    assert parsed.timestamp == pytest.approx(at(when), abs=1e-6)


def test_dates_without_a_zone_use_tz() -> None:
    plus_one = timezone(timedelta(hours=1))
    bsd = parse(b"<13>Nov 25 14:00:00 h a: x", received=RECEIVED, tz=plus_one)
    assert bsd.timestamp == at("2026-11-25T13:00:00+00:00")
    iso = parse(b"<13>2026-11-25T14:00:00 h a: x", received=RECEIVED, tz=plus_one)
    assert iso.timestamp == at("2026-11-25T13:00:00+00:00")
    zoned = parse(b"<13>1 2026-11-25T14:00:00Z h a - - - x", received=RECEIVED, tz=plus_one)
    assert zoned.timestamp == at("2026-11-25T14:00:00+00:00")


def syslog_handler_datagram(emit: Callable[[logging.Logger], None],
                            configure: Callable[[logging.handlers.SysLogHandler], None]
                            = lambda handler: None,
                            name: str = "tests.syslog") -> bytes:
    """What Python's SysLogHandler sends, caught on a loopback socket of our own."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        handler = logging.handlers.SysLogHandler(address=sock.getsockname())
        logger = logging.getLogger(name)
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        configure(handler)
        logger.addHandler(handler)
        try:
            emit(logger)
        finally:
            logger.removeHandler(handler)
            handler.close()
        data, _ = sock.recvfrom(65535)
    return data


def test_python_syslog_handler_default() -> None:
    data = syslog_handler_datagram(lambda logger: logger.warning("disk almost full"))
    assert data == b"<12>disk almost full\x00"
    assert_parsed(parse(data, received=RECEIVED), expected("disk almost full", "bare", pri=12))


def test_python_syslog_handler_ident_and_facility() -> None:
    def configure(handler: logging.handlers.SysLogHandler) -> None:
        handler.ident = "myapp: "
        handler.facility = logging.handlers.SysLogHandler.LOG_LOCAL3

    data = syslog_handler_datagram(lambda logger: logger.error("payment failed"), configure)
    assert data == b"<155>myapp: payment failed\x00"
    event = to_sentry_event(parse(data, received=RECEIVED))
    assert event == {"platform": "other", "level": "error", "message": "payment failed",
                     "logger": "myapp", "tags": {"facility": "local3", "app_name": "myapp"}}


def test_python_syslog_handler_formatter_with_name_and_pid() -> None:
    def configure(handler: logging.handlers.SysLogHandler) -> None:
        handler.setFormatter(logging.Formatter("%(name)s[%(process)d]: %(message)s"))

    data = syslog_handler_datagram(lambda logger: logger.info("job done"), configure, "worker")
    parsed = parse(data, received=RECEIVED)
    assert (parsed.app_name, parsed.message, parsed.severity) == ("worker", "job done", 6)
    assert parsed.proc_id is not None and parsed.proc_id.isdigit()


def test_python_syslog_handler_traceback_becomes_exception_values() -> None:
    def emit(logger: logging.Logger) -> None:
        try:
            {}["user:42"]
        except KeyError:
            logger.exception("payment failed")

    data = syslog_handler_datagram(emit, lambda handler: setattr(handler, "ident", "billing: "))
    assert data.startswith(b"<11>billing: payment failed\nTraceback (most recent call last):\n")
    event = to_sentry_event(parse(data, received=RECEIVED))
    assert event["platform"] == "python"
    assert event["message"] == "payment failed"
    assert event["level"] == "error"
    [value] = event["exception"]["values"]
    assert (value["type"], value["value"]) == ("KeyError", "'user:42'")
    frame = value["stacktrace"]["frames"][-1]
    assert frame["filename"] == __file__ and frame["function"] == "emit"


PY_TRACE = ('Traceback (most recent call last):\n'
            '  File "/srv/app/pay.py", line 3, in charge\n'
            '    1 / 0\n'
            'ZeroDivisionError: division by zero')


def test_rsyslog_escaped_newlines_reveal_a_trace() -> None:
    datagram = (b"<11>Nov 25 14:00:00 web1 myapp[7]: payment failed#012"
                + PY_TRACE.replace("\n", "#012").encode())
    event = to_sentry_event(parse(datagram, received=RECEIVED))
    assert event["message"] == "payment failed"
    assert event["platform"] == "python"
    [value] = event["exception"]["values"]
    assert value["type"] == "ZeroDivisionError"
    assert value["stacktrace"]["frames"][0]["context_line"] == "1 / 0"


def test_escaped_newline_without_a_trace_stays_as_sent() -> None:
    event = to_sentry_event(parse(b"<13>Nov 25 14:00:00 h a: issue #012 closed",
                                  received=RECEIVED))
    assert event["message"] == "issue #012 closed" and "exception" not in event


def test_java_trace_in_rfc5424() -> None:
    text = ("Request failed\n"
            "java.lang.IllegalStateException: pool exhausted\n"
            "\tat com.example.Pool.take(Pool.java:41)\n"
            "\tat com.example.Main.main(Main.java:5)\n"
            "Caused by: java.net.ConnectException: refused\n"
            "\tat java.net.Socket.connect(Socket.java:10)\n"
            "\t... 2 more")
    datagram = b"<11>1 2026-11-25T14:00:00Z host api 1 - - " + text.encode()
    event = to_sentry_event(parse(datagram, received=RECEIVED))
    assert event["platform"] == "java"
    assert event["message"] == "Request failed"
    values = event["exception"]["values"]
    assert [(v.get("module"), v["type"]) for v in values] == [
        ("java.net", "ConnectException"), ("java.lang", "IllegalStateException")]


def test_node_trace_and_a_trace_with_nothing_before_it() -> None:
    text = ("Unhandled rejection\n"
            "TypeError: x is not a function\n"
            "    at handler (/srv/app/index.js:10:5)\n"
            "    at process (node:internal/process:1:1)")
    event = to_sentry_event(parse(b"<11>" + text.encode(), received=RECEIVED))
    assert event["platform"] == "node" and event["message"] == "Unhandled rejection"
    assert event["exception"]["values"][0]["type"] == "TypeError"
    bare = to_sentry_event(parse(b"<11>" + PY_TRACE.encode(), received=RECEIVED))
    assert "message" not in bare
    assert bare["exception"]["values"][0]["type"] == "ZeroDivisionError"


def test_full_event_for_rfc5424() -> None:
    datagram = (b'<11>1 2026-11-25T14:00:00.123456+01:00 myhost myapp 1234 ID7 '
                b'[timeQuality tzKnown="1" isSynced="0"][origin ip="10.0.0.5"] message')
    event = to_sentry_event(parse(datagram, received=RECEIVED))
    assert event.pop("timestamp") == pytest.approx(at("2026-11-25T14:00:00.123456+01:00"))
    assert event == {
        "platform": "other", "level": "error", "message": "message", "logger": "myapp",
        "server_name": "myhost",
        "tags": {"facility": "user", "app_name": "myapp", "host": "myhost", "proc_id": "1234",
                 "msg_id": "ID7"},
        "extra": {"sd.timeQuality.tzKnown": "1", "sd.timeQuality.isSynced": "0",
                  "sd.origin.ip": "10.0.0.5"},
    }
    normalized = normalize_event(event, received=RECEIVED)
    assert (normalized.level, normalized.server_name, normalized.logger) == (
        "error", "myhost", "myapp")


@pytest.mark.parametrize(("severity", "level"), [
    (0, "fatal"), (1, "fatal"), (2, "fatal"), (3, "error"), (4, "warning"), (5, "info"),
    (6, "info"), (7, "debug"), (None, "info")])
def test_severity_to_level(severity: int | None, level: str) -> None:
    datagram = b"x" if severity is None else b"<%d>x" % (8 + severity)
    assert to_sentry_event(parse(datagram, received=RECEIVED))["level"] == level


@pytest.mark.parametrize(("facility", "name"), [
    (0, "kern"), (4, "auth"), (10, "authpriv"), (12, "ntp"), (13, "security"),
    (14, "console"), (15, "solaris-cron"), (16, "local0"), (23, "local7")])
def test_facility_names(facility: int, name: str) -> None:
    event = to_sentry_event(parse(b"<%d>x" % (facility * 8 + 5), received=RECEIVED))
    assert event["tags"]["facility"] == name
    assert len(FACILITIES) == 24


def test_bounds() -> None:
    elements = b"".join(b"[e%d]" % index for index in range(MAX_SD_ELEMENTS + 10))
    parsed = parse(b"<13>1 - - - - - " + elements + b" m", received=RECEIVED)
    assert list(parsed.structured_data) == [f"e{index}" for index in range(MAX_SD_ELEMENTS)]
    params = b"".join(b' p%d="v"' % index for index in range(MAX_SD_PARAMS + 10))
    parsed = parse(b"<13>1 - - - - - [a" + params + b"] m", received=RECEIVED)
    assert len(parsed.structured_data["a"]) == MAX_SD_PARAMS
    two_bytes = parse(b"<13>" + "é".encode() * 40_000, received=RECEIVED)
    assert len(two_bytes.message) == MAX_MESSAGE_BYTES // 2
    three_bytes = parse(b"<13>" + "€".encode() * 30_000, received=RECEIVED)
    assert three_bytes.message == "€" * (MAX_MESSAGE_BYTES // 3)


MEGABYTE = 1_000_000
ADVERSARIAL = [
    b'<13>1 - - - - - [a x="' + b"\\" * MEGABYTE + b'"] m',
    b"<13>1 - - - - - " + b"[a]" * (MEGABYTE // 3) + b" m",
    b"<13>1 - - - - - [a" + b' p="v"' * (MEGABYTE // 6) + b"] m",
    b"<13>1 - - - - - [" + b"a" * MEGABYTE,
    b"<13>Nov 25 14:00:00 " + b"a[" * (MEGABYTE // 2),
    b"<13>Nov 25 14:00:00 h " + b"a" * MEGABYTE + b": x",
    b"<13>" + b"x" * MEGABYTE + b": y",
    b"<13>1 " + b" " * MEGABYTE,
    b"<13>" + b" " * MEGABYTE + b"x",
    b"<13>" + b"\x80" * MEGABYTE,
    b"<13>x\n" + b"    at a.b(C.java:1)\n" * (MEGABYTE // 21),
]


@pytest.mark.parametrize("datagram", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_megabyte_datagrams_return(datagram: bytes) -> None:
    assert len(datagram) >= MEGABYTE
    try:
        parsed = parse(datagram, received=RECEIVED)
    except SyslogError as exc:
        assert str(exc).startswith("syslog: ")
    else:
        assert len(parsed.message.encode()) <= MAX_MESSAGE_BYTES
        assert isinstance(to_sentry_event(parsed)["level"], str)


PREFIXES = [b"", b"<13>", b"<13>1 ", b"<13>1 - - - - - ", b"<13>1 2026-11-25T14:00:00Z h a 1 m ",
            b"<30>Nov 25 14:00:00 ", b"<30> 2026-11-25T14:00:00+01:00 ", b"<191>", b"\xef\xbb\xbf"]
PIECES = [b"<", b">", b"[", b"]", b"=", b'"', b"\\", b" ", b"-", b":", b"1", b"13", b"x", b"a[1]:",
          b"2026-11-25T14:00:00Z", b"Nov  5 14:00:00", b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\n",
          b"\r", b"\x00", b"#012", b"Traceback (most recent call last):\n",
          b'  File "/a.py", line 1, in f\n', b"    at a.b(C.java:1)\n", b"\tat x (/a.js:1:2)\n",
          b"ValueError: v\n", b"\xe2\x82\xac"]
DATAGRAM = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.sampled_from(PREFIXES), st.lists(st.sampled_from(PIECES), max_size=40))
    .map(lambda parts: parts[0] + b"".join(parts[1])))
RECEIVED_TIMES = st.one_of(st.just(RECEIVED), st.floats(min_value=0, max_value=4e9))


def parse_or_none(datagram: bytes, received: float) -> SyslogMessage | None:
    try:
        return parse(datagram, received=received)
    except SyslogError as exc:
        assert str(exc).startswith("syslog: ")
        return None


@settings(max_examples=200, deadline=None)
@given(DATAGRAM, RECEIVED_TIMES)
def test_parse_raises_only_syslog_error(datagram: bytes, received: float) -> None:
    parsed = parse_or_none(datagram, received)
    if parsed is not None:
        assert parsed.message.strip()
        assert len(parsed.message.encode()) <= MAX_MESSAGE_BYTES
        assert parsed.format in ("rfc5424", "rfc3164", "bare")
        assert parsed.severity is None or 0 <= parsed.severity <= 7
        assert parsed.timestamp is None or parsed.timestamp >= 0


def assert_usable(event: dict[str, Any]) -> None:
    assert event["level"] in LEVELS
    assert "message" in event or "exception" in event
    orjson.dumps(event)
    normalize_event(event, received=RECEIVED)


@settings(max_examples=200, deadline=None)
@given(DATAGRAM, RECEIVED_TIMES)
def test_to_sentry_event_accepts_every_parsed_message(datagram: bytes, received: float) -> None:
    parsed = parse_or_none(datagram, received)
    if parsed is not None:
        assert_usable(to_sentry_event(parsed))


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(st.builds(
    SyslogMessage, facility=st.none() | st.integers(0, 23), severity=st.none() | st.integers(0, 7),
    timestamp=st.none() | st.floats(min_value=0, max_value=4e9), hostname=st.none() | TEXT,
    app_name=st.none() | TEXT, proc_id=st.none() | TEXT, msg_id=st.none() | TEXT,
    structured_data=st.dictionaries(TEXT, st.dictionaries(TEXT, TEXT, max_size=3), max_size=3),
    message=st.lists(st.sampled_from(["x", "\n", " ", "at a.b(C.java:1)", "E: v", "#012",
                                      "Traceback (most recent call last):"]), min_size=1)
    .map("".join).filter(str.strip) | TEXT.filter(str.strip),
    format=st.sampled_from(["rfc5424", "rfc3164", "bare"])))
def test_to_sentry_event_accepts_any_message(message: SyslogMessage) -> None:
    event = to_sentry_event(message)
    assert event["level"] in LEVELS
    orjson.dumps(event)
