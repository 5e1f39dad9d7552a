"""Log shipper batches: framing, field mapping onto Sentry events, level filtering."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from daemon.events.formats.shipper import (
    LEVELS,
    Record,
    ShipperBodyError,
    ShipperRecordError,
    level_at_least,
    split_records,
    to_sentry_event,
)

A, B, C = {"message": "a"}, {"message": "b", "n": [1, {"x": "}{"}]}, {"message": "c\n{"}


def values(records: list[Record]) -> list[dict[str, Any] | None]:
    return [record.value for record in records]


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"message": "a"}', [A]),
    (b'  {"message": "a"}\n', [A]),
    (b'\xef\xbb\xbf{"message": "a"}', [A]),
    (b'[{"message": "a"}, {"message": "b", "n": [1, {"x": "}{"}]}]', [A, B]),
    (b'[\n  {"message": "a"},\n  {"message": "c\\n{"}\n]\n', [A, C]),
    (b'{"message": "a"}\n{"message": "b", "n": [1, {"x": "}{"}]}', [A, B]),
    (b'{"message": "a"}\n{"message": "b", "n": [1, {"x": "}{"}]}\n', [A, B]),
    (b'{"message": "a"}\r\n\r\n{"message": "c\\n{"}\r\n', [A, C]),
    (b'\n\n{"message": "a"}\n   \n{"message": "c\\n{"}\n\n', [A, C]),
    (b'{"message": "a"}{"message": "b", "n": [1, {"x": "}{"}]}{"message": "c\\n{"}', [A, B, C]),
    (b'{"message": "a"} {"message": "b", "n": [1, {"x": "}{"}]}\t{"message": "c\\n{"} ',
     [A, B, C]),
    (b'{\n  "message": "a"\n}\n{\n  "message": "b",\n  "n": [1, {"x": "}{"}]\n}\n', [A, B]),
    (b'{"message": "a"}\n{"message": "b", "n": [1, {"x": "}{"}]} {"message": "c\\n{"}\n',
     [A, B, C]),
])
def test_framings(body: bytes, expected: list[dict[str, Any]]) -> None:
    records = split_records(body)
    assert values(records) == expected
    assert [record.index for record in records] == list(range(len(expected)))
    assert all(record.error is None for record in records)


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"message": "a"}\nnot json\n{"message": "b"\n\n[1]\n"s"\r\n{"message": "c"}',
     [(A, None),
      (None, "line 2: invalid JSON: invalid literal, expected 'null' (column 1)"),
      (None, "line 3: invalid JSON: unexpected end of data (column 16)"),
      (None, "line 5: expected a JSON object, got array"),
      (None, "line 6: expected a JSON object, got string"),
      ({"message": "c"}, None)]),
    (b'[{"message": "a"}, 1, [2], null, true, "s"]',
     [(A, None),
      (None, "element 1: expected a JSON object, got number"),
      (None, "element 2: expected a JSON object, got array"),
      (None, "element 3: expected a JSON object, got null"),
      (None, "element 4: expected a JSON object, got boolean"),
      (None, "element 5: expected a JSON object, got string")]),
    (b'{"message": "a"}{"message" 1}',
     [(A, None),
      (None, "line 1: invalid JSON: Expecting ':' delimiter (column 28)")]),
    (b'{"message": "a"}\n{"message": "b",\n  "x": }\n',
     [(A, None),
      (None, "line 3: invalid JSON: Expecting value (column 8)")]),
    (b'{\n "message": "a"\n}\n{\n "message": \n}\n',
     [(A, None),
      (None, "line 6: invalid JSON: Expecting value (column 1)")]),
    (b'{"message": "a"}\n{"message": "\xff"}\n',
     [(A, None),
      (None, "line 2: invalid JSON: str is not valid UTF-8: surrogates not allowed "
             "(column 1)")]),
])
def test_bad_records_do_not_reject_the_rest(
        body: bytes, expected: list[tuple[dict[str, Any] | None, str | None]]) -> None:
    records = split_records(body)
    assert [(record.value, record.error) for record in records] == expected
    assert [record.index for record in records] == list(range(len(expected)))


@pytest.mark.parametrize(("body", "message"), [
    (b"", "body: empty"),
    (b" \r\n\t\n", "body: empty"),
    (b"\xef\xbb\xbf", "body: empty"),
    (b"[]", "body: no JSON object found (empty array)"),
    (b"42", "body: no JSON object found (got number)"),
    (b'"text"', "body: no JSON object found (got string)"),
    (b"[1, 2]", "body: no JSON object found (element 0: expected a JSON object, got number)"),
    (b"hello\nworld", "body: no JSON object found (line 1: invalid JSON: unexpected "
                      "character, expected a JSON value (column 1))"),
    (b'{"a": ', "body: no JSON object found (line 1: invalid JSON: unexpected end of data "
               "(column 7))"),
])
def test_body_errors(body: bytes, message: str) -> None:
    with pytest.raises(ShipperBodyError) as caught:
        split_records(body)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("body", [
    b"[" + b",".join([b"{}"] * 4) + b"]",
    b"{}\n" * 4,
    b"{}" * 4,
    b"{}\nbad\n{}\nbad\n",
    b"{\n}\n" * 4,
])
def test_max_records(body: bytes) -> None:
    assert len(split_records(body, max_records=4)) == 4
    with pytest.raises(ShipperBodyError, match=r"^body: more than 3 records$"):
        split_records(body, max_records=3)


def test_ten_megabyte_ndjson_batch() -> None:
    line = orjson.dumps({"message": "x" * 200, "level": "error", "host": "web1", "seq": 0})
    body = b"\n".join(line.replace(b'"seq":0', b'"seq":%d' % i) for i in range(40_000))
    assert len(body) > 10_000_000
    records = split_records(body)
    assert len(records) == 40_000
    assert records[-1].value is not None and records[-1].value["seq"] == 39_999


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_arbitrary_bytes_only_raise_body_errors(body: bytes) -> None:
    try:
        records = split_records(body)
    except ShipperBodyError:
        return
    assert any(record.value is not None for record in records)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"{", b"}", b'"', b"\\", b"\n", b"[", b"]", b":", b",",
                                 b'{"a":1}', b" ", b"\r\n", b"1", b"\xff"])).map(b"".join))
def test_json_shaped_bytes_only_raise_body_errors(body: bytes) -> None:
    try:
        records = split_records(body)
    except ShipperBodyError:
        return
    assert all((record.value is None) != (record.error is None) for record in records)


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=12), st.sampled_from(['}{', '"\\', "\n{"]))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)
OBJECTS = st.lists(st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4),
                   min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(OBJECTS, st.sampled_from([b"", b" ", b"\n", b"\r\n", b" \n\t"]))
# Pretty-printed, an inner "{}" line parses on its own.
@example(objects=[{}, {"": [{}], "0": [{}]}], gap=b"")
def test_every_framing_yields_the_same_records(objects: list[dict[str, Any]],
                                               gap: bytes) -> None:
    encoded = [orjson.dumps(obj) for obj in objects]
    array = split_records(b"[" + b",".join(encoded) + b"]")
    ndjson = split_records(b"\n".join(encoded) + b"\n")
    concatenated = split_records(gap.join(encoded))
    pretty = split_records(b"\n".join(orjson.dumps(obj, option=orjson.OPT_INDENT_2)
                                      for obj in objects))
    expected = [Record(index, obj, None) for index, obj in enumerate(objects)]
    assert array == ndjson == concatenated == pretty == expected


# Field mapping.

def test_minimal_record() -> None:
    assert to_sentry_event({"message": "disk full"}) == {
        "platform": "other", "level": "info", "message": "disk full",
        "logentry": {"formatted": "disk full"}}


@pytest.mark.parametrize("record", [
    {"message": "m"}, {"msg": "m"}, {"log": "m\n"}, {"short_message": "m"}, {"text": "m"},
    {"message": "m", "msg": "other"}, {"message": None, "msg": "m"}, {"message": "", "log": "m"},
    {"log": {"level": "info"}, "msg": "m"}, {"log": "m\r\n", "text": "other"},
])
def test_message_aliases(record: dict[str, Any]) -> None:
    event = to_sentry_event(record)
    assert event["message"] == "m"
    assert event["logentry"] == {"formatted": "m"}


def test_numeric_message() -> None:
    assert to_sentry_event({"message": 42})["message"] == "42"


@pytest.mark.parametrize(("value", "level"), [
    *[(name, "fatal") for name in ("emerg", "EMERGENCY", "Alert", "crit", "critical", "FATAL")],
    *[(name, "error") for name in ("err", "ERROR", " error ")],
    *[(name, "warning") for name in ("warn", "WARNING")],
    *[(name, "info") for name in ("notice", "INFO", "informational")],
    *[(name, "debug") for name in ("debug", "TRACE")],
    (0, "fatal"), (1, "fatal"), (2, "fatal"), (3, "error"), (4, "warning"), (5, "info"),
    (6, "info"), (7, "debug"), ("3", "error"), (4.0, "warning"),
    (50, "fatal"), (40, "error"), (30, "warning"), (20, "info"), (10, "debug"),
    (45, "error"), (25, "info"), (5_000, "fatal"), (9, "debug"), ("40", "error"),
])
def test_level_forms(value: Any, level: str) -> None:
    assert to_sentry_event({"message": "m", "level": value})["level"] == level


@pytest.mark.parametrize("record", [
    {"level": "warn"}, {"severity": "warn"}, {"log.level": "warn"}, {"log": {"level": "warn"}},
    {"levelname": "WARNING"}, {"loglevel": 4}, {"level": None, "severity": "warning"},
    {"level": "warn", "severity": "debug"},
])
def test_level_aliases(record: dict[str, Any]) -> None:
    assert to_sentry_event({"message": "m", **record})["level"] == "warning"


def test_level_defaults_to_info() -> None:
    assert to_sentry_event({"message": "m"})["level"] == "info"
    assert to_sentry_event({"message": "m", "level": ""})["level"] == "info"


@pytest.mark.parametrize(("value", "expected"), [
    ("2024-05-01T12:00:00Z", 1714564800.0),
    ("2024-05-01T12:00:00.250Z", 1714564800.25),
    ("2024-05-01T12:00:00.123456789Z", 1714564800.123456789),
    ("2024-05-01T14:00:00+02:00", 1714564800.0),
    ("2024-05-01T07:30:00-0430", 1714564800.0),
    ("2024-05-01 12:00:00", 1714564800.0),
    ("2024-05-01t12:00:00,5z", 1714564800.5),
    (1714564800, 1714564800.0),
    (1714564800.5, 1714564800.5),
    ("1714564800.5", 1714564800.5),
    (1714564800250, 1714564800.25),
    (1714564800250000, 1714564800.25),
    (1714564800250000000, 1714564800.25),
    (0, 0.0),
])
def test_timestamps(value: Any, expected: float) -> None:
    event = to_sentry_event({"message": "m", "timestamp": value})
    assert event["timestamp"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("key", ["timestamp", "@timestamp", "time", "ts"])
def test_timestamp_aliases(key: str) -> None:
    assert to_sentry_event({"message": "m", key: 1714564800})["timestamp"] == 1714564800.0


def test_no_timestamp_is_left_to_the_normalizer() -> None:
    assert "timestamp" not in to_sentry_event({"message": "m"})


@pytest.mark.parametrize(("field", "aliases", "value"), [
    ("logger", ["logger", "logger_name", "log.logger"], "app.db"),
    ("release", ["release", "version", "service.version"], "1.4.2"),
    ("environment", ["environment", "env", "deployment.environment"], "production"),
    ("server_name", ["host", "hostname", "host.name"], "web-1"),
])
def test_string_field_aliases(field: str, aliases: list[str], value: str) -> None:
    for alias in aliases:
        flat = to_sentry_event({"message": "m", alias: value})
        assert flat[field] == value
        assert "extra" not in flat
        if "." in alias:
            head, _, tail = alias.partition(".")
            nested = to_sentry_event({"message": "m", head: {tail: value, "other": 1}})
            assert nested[field] == value
            assert nested["extra"] == {head: {"other": 1}}
    first, second = aliases[0], aliases[1]
    assert to_sentry_event({"message": "m", second: "b", first: value})[field] == value


def test_numeric_release() -> None:
    assert to_sentry_event({"message": "m", "version": 2})["release"] == "2"


def test_ecs_record() -> None:
    event = to_sentry_event({
        "@timestamp": "2024-05-01T12:00:00Z", "message": "query failed",
        "log": {"level": "ERROR", "logger": "app.db", "origin": {"file": {"line": 3}}},
        "service": {"name": "api", "version": "1.2"}, "host": {"name": "web1"},
        "deployment": {"environment": "prod"}, "trace": {"id": "abc"},
    })
    assert event == {
        "platform": "other", "level": "error", "timestamp": 1714564800.0,
        "message": "query failed", "logentry": {"formatted": "query failed"},
        "logger": "app.db", "release": "1.2", "environment": "prod", "server_name": "web1",
        "tags": {"service": "api"},
        "extra": {"log": {"origin": {"file": {"line": 3}}}, "trace": {"id": "abc"}},
    }


def test_tags() -> None:
    event = to_sentry_event({"message": "m", "tags": {"a": "x", "n": 3, "f": 1.5, "b": True,
                                                      "none": None}, "service": "api"})
    assert event["tags"] == {"a": "x", "n": "3", "f": "1.5", "b": "true", "service": "api"}
    explicit = to_sentry_event({"message": "m", "tags": {"service": "web"}, "service": "api"})
    assert explicit["tags"] == {"service": "web"}
    assert explicit["extra"] == {"service": "api"}
    logstash = to_sentry_event({"message": "m", "tags": ["_grokparsefailure"]})
    assert "tags" not in logstash
    assert logstash["extra"] == {"tags": ["_grokparsefailure"]}
    assert to_sentry_event({"message": "m", "service.name": "api"})["tags"] == {"service": "api"}


def test_event_id_and_fingerprint() -> None:
    event = to_sentry_event({"message": "m", "event_id": "0123456789ABCDEF0123456789abcdef",
                             "fingerprint": ["{{ default }}", 7]})
    assert event["event_id"] == "0123456789abcdef0123456789abcdef"
    assert event["fingerprint"] == ["{{ default }}", "7"]
    dashed = to_sentry_event({"message": "m", "event_id": "01234567-89ab-cdef-0123-456789abcdef"})
    assert dashed["event_id"] == "0123456789abcdef0123456789abcdef"
    odd = to_sentry_event({"message": "m", "event_id": "not-an-id"})
    assert "event_id" not in odd
    assert odd["extra"] == {"event_id": "not-an-id"}


def test_extra_is_bounded() -> None:
    record: dict[str, Any] = {"message": "m", "big": "é" * 20_000, "deep": {"k": "x" * 20_000}}
    record.update({f"k{i:03}": i for i in range(150)})
    extra = to_sentry_event(record)["extra"]
    assert len(extra) == 100
    assert list(extra)[:3] == ["big", "deep", "k000"]
    assert len(extra["big"].encode()) == 16 * 1024
    assert extra["deep"].startswith('{"k":"xxx')
    assert len(extra["deep"]) == 16 * 1024
    assert extra["k097"] == 97


PY_TRACE = ('Traceback (most recent call last):\n  File "/app/x.py", line 3, in f\n'
            '    g()\nValueError: bad\n')
JAVA_TRACE = "java.lang.IllegalStateException: boom\n\tat com.a.B.c(B.java:9)\n"
NODE_TRACE = "TypeError: nope\n    at f (/app/a.js:1:2)\n"


@pytest.mark.parametrize("key", [
    "exception", "exception.stacktrace", "stacktrace", "stack_trace", "stack", "exc_info",
    "traceback", "error.stack_trace", "error.stack", "err.stack", "full_message",
])
def test_stack_text_aliases(key: str) -> None:
    event = to_sentry_event({"message": "m", key: PY_TRACE})
    [exception] = event["exception"]["values"]
    assert (exception["type"], exception["value"]) == ("ValueError", "bad")
    assert exception["stacktrace"]["frames"][0]["function"] == "f"
    assert event["platform"] == "python"
    assert "extra" not in event
    if "." in key:
        head, _, tail = key.partition(".")
        nested = to_sentry_event({"message": "m", head: {tail: PY_TRACE}})
        assert nested["exception"] == event["exception"]


@pytest.mark.parametrize(("record", "platform", "expected"), [
    ({"msg": "failed", "exc_info": PY_TRACE}, "python", ("ValueError", None, "bad")),
    ({"stack_trace": JAVA_TRACE, "message": "x"}, "java",
     ("IllegalStateException", "java.lang", "boom")),
    ({"err": {"type": "TypeError", "message": "nope", "stack": NODE_TRACE}}, "node",
     ("TypeError", None, "nope")),
    ({"error.type": "app.Oops", "error.message": "bad thing"}, "other",
     ("Oops", "app", "bad thing")),
    ({"exc_type": "KeyError", "exc_value": "'k'", "traceback": PY_TRACE}, "python",
     ("KeyError", None, "'k'")),
    ({"exception": {"type": "E", "value": "v", "module": "m"}}, "other", ("E", "m", "v")),
    ({"exception": {"type": "E", "stacktrace": PY_TRACE}}, "python", ("E", None, "bad")),
    ({"exception": "plain words"}, "other", ("Error", None, "plain words")),
    ({"exception.type": "E"}, "other", ("E", None, "")),
    ({"message": "request failed\n" + JAVA_TRACE}, "java",
     ("IllegalStateException", "java.lang", "boom")),
])
def test_exception_forms(record: dict[str, Any], platform: str,
                         expected: tuple[str, str | None, str]) -> None:
    event = to_sentry_event(record)
    top = event["exception"]["values"][-1]
    assert (top["type"], top.get("module"), top["value"]) == expected
    assert event["platform"] == platform


def test_frames_array_and_sentry_values() -> None:
    frames = [{"filename": "a.py", "lineno": 1}, "junk", {"filename": "b.py", "lineno": 2}]
    event = to_sentry_event({"exception": {"type": "E", "value": "v",
                                           "stacktrace": {"frames": frames}}})
    assert event["exception"]["values"] == [{"type": "E", "value": "v", "stacktrace": {
        "frames": [{"filename": "a.py", "lineno": 1}, {"filename": "b.py", "lineno": 2}]}}]
    lines = to_sentry_event({"message": "m", "stack": PY_TRACE.splitlines()})
    assert lines["exception"]["values"][0]["type"] == "ValueError"
    native = {"values": [{"type": "A", "value": "1"}, 7, {"type": "B", "value": "2"}]}
    assert to_sentry_event({"exception": native})["exception"]["values"] == [
        {"type": "A", "value": "1"}, {"type": "B", "value": "2"}]


def test_unparsed_stack_text_stays_in_extra() -> None:
    event = to_sentry_event({"message": "m", "stack": "no trace here", "exc_info": True})
    assert "exception" not in event
    assert event["extra"] == {"stack": "no trace here", "exc_info": True}
    typed = to_sentry_event({"exc_type": "E", "stack": "no trace here"})
    assert typed["exception"]["values"] == [{"type": "E", "value": ""}]
    assert typed["extra"] == {"stack": "no trace here"}


def test_single_line_message_is_not_parsed_as_trace() -> None:
    assert "exception" not in to_sentry_event({"message": "ValueError: bad"})


@pytest.mark.parametrize(("record", "message"), [
    ({}, "record has no message, msg, log or exception field"),
    ({"message": None, "level": "error"}, "record has no message, msg, log or exception field"),
    ({"log": {"level": "error"}}, "record has no message, msg, log or exception field"),
    ({"message": {"text": "x"}}, "message: expected a string, got object"),
    ({"msg": ["x"]}, "msg: expected a string, got array"),
    ({"text": True}, "text: expected a string, got boolean"),
    ({"message": "m", "level": {"x": 1}}, "level: expected a string or number, got object"),
    ({"message": "m", "severity": [3]}, "severity: expected a string or number, got array"),
    ({"message": "m", "level": True}, "level: expected a string or number, got boolean"),
    ({"message": "m", "level": "verbose"}, "level: unknown level 'verbose' (expected a level "
                                           "name, a syslog severity 0-7 or a Python logging "
                                           "level)"),
    ({"message": "m", "level": -1}, "level: -1 is not a syslog or Python logging level"),
    ({"message": "m", "level": 2.5}, "level: 2.5 is not a syslog or Python logging level"),
    ({"message": "m", "timestamp": "yesterday"},
     "timestamp: 'yesterday' is not an RFC 3339 date or epoch time"),
    ({"message": "m", "ts": "2024-13-01T00:00:00Z"},
     "ts: '2024-13-01T00:00:00Z' is not a valid date (month must be in 1..12)"),
    ({"message": "m", "time": {"s": 1}}, "time: expected a string or number, got object"),
    ({"message": "m", "@timestamp": -5}, "@timestamp: -5.0 is not an epoch time"),
    ({"message": "m", "logger": {"name": "x"}}, "logger: expected a string, got object"),
    ({"message": "m", "release": ["1"]}, "release: expected a string, got array"),
    ({"message": "m", "env": False}, "env: expected a string, got boolean"),
    ({"message": "m", "hostname": ["a"]}, "hostname: expected a string, got array"),
    ({"message": "m", "tags": "a,b"}, "tags: expected an object, got string"),
    ({"message": "m", "tags": {"k": {"v": 1}}},
     "tags.k: expected a string, number or boolean, got object"),
    ({"message": "m", "fingerprint": "x"}, "fingerprint: expected an array of strings, got string"),
    ({"message": "m", "fingerprint": ["a", None]}, "fingerprint[1]: expected a string, got null"),
    ({"message": "m", "error.type": {"a": 1}}, "error.type: expected a string, got object"),
    ({"message": "m", "service": ["api"]}, "service: expected a string, got array"),
])
def test_record_errors(record: dict[str, Any], message: str) -> None:
    with pytest.raises(ShipperRecordError) as caught:
        to_sentry_event(record)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_non_object_record() -> None:
    with pytest.raises(ShipperRecordError, match=r"^record: expected a JSON object, got array$"):
        to_sentry_event([])  # type: ignore[arg-type]


def test_levels_and_filter() -> None:
    assert LEVELS == ("debug", "info", "warning", "error", "fatal")
    assert level_at_least("error", "warning")
    assert level_at_least("warning", "warning")
    assert not level_at_least("info", "warning")
    assert level_at_least("fatal", "debug")
    assert not level_at_least("debug", "fatal")
    with pytest.raises(ValueError, match="unknown level 'critical'"):
        level_at_least("critical", "info")
    with pytest.raises(ValueError, match="unknown level 'loud'"):
        level_at_least("info", "loud")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([
    "message", "msg", "log", "level", "severity", "timestamp", "ts", "tags", "host", "service",
    "exception", "error", "stack", "fingerprint", "event_id", "release", "other"]),
    JSON_VALUES, max_size=6))
def test_mapping_raises_only_record_errors(record: dict[str, Any]) -> None:
    try:
        event = to_sentry_event(record)
    except ShipperRecordError:
        return
    assert event["level"] in LEVELS
    assert "message" in event or "exception" in event
    orjson.dumps(event)
