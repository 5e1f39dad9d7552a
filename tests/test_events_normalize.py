"""Sentry payloads to Events: shapes Relay accepts, errors that name the field, and the
title and culprit of every event the real sentry-sdk produced (tests/data/sentry_events)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.events.pipeline.eventtext import MAX_NAME, MAX_TITLE
from daemon.events.pipeline.fingerprint import grouping_hash
from daemon.events.pipeline.model import Event, Frame, InvalidEvent
from daemon.events.pipeline.normalize import LEVELS, normalize_event

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "sentry_events"
NAMES = sorted(path.stem for path in CORPUS.glob("*.json"))
RECEIVED = 1_768_478_500.0  # 100 s after the corpus's pinned clock
PINNED = 1_768_478_400.0  # 2026-01-15T12:00:00Z


def payload(name: str) -> dict[str, Any]:
    return json.loads((CORPUS / f"{name}.json").read_text(encoding="utf-8"))


def norm(data: Any, received: float = RECEIVED) -> Event:
    return normalize_event(data, received=received)


def failure(data: Any) -> str:
    with pytest.raises(InvalidEvent) as caught:
        norm(data)
    return str(caught.value)


def frames(*items: dict[str, Any]) -> dict[str, Any]:
    return {"exception": {"values": [{"type": "E", "stacktrace": {"frames": list(items)}}]}}


TITLES = {
    "breadcrumbs": ("KeyError: 'sku-17'", "shop.inventory in lookup_price"),
    "chained_explicit": ("ConfigError: limit must be a number, got 'ten'",
                         "shop.config in load_limit"),
    "chained_implicit": ("KeyError: 'o-7'", "shop.recovery in checkout_or_refund"),
    "custom_fingerprint": ("ZeroDivisionError: division by zero", "shop.orders in total_per_item"),
    "exception_group": ("ExceptionGroup: validation failed", "shop.batch in validate_all"),
    "key_error_price_a": ("KeyError: 'sku-17'", "shop.inventory in lookup_price"),
    "key_error_price_b": ("KeyError: 'sku-42'", "shop.inventory in lookup_price"),
    "key_error_stock": ("KeyError: 'sku-17'", "shop.inventory in lookup_stock"),
    "library_declined_a": ("PaymentDeclined: card declined for order 17",
                           "shop.payments in charge"),
    "library_declined_b": ("PaymentDeclined: card declined for order 42",
                           "shop.payments in charge"),
    "line_shift_v1": ("KeyError: 'SPRING'", "shop.cart in apply_coupon"),
    "line_shift_v2": ("KeyError: 'SPRING'", "shop.cart in apply_coupon"),
    "logging_template_a": ("Job reindex failed after 3 attempts", ""),
    "logging_template_b": ("Job sync failed after 5 attempts", ""),
    "message_numbers_a": ("Processed 17 items in 3.2s", ""),
    "message_numbers_b": ("Processed 5 items in 0.7s", ""),
    "message_plain": ("Nightly report sent", ""),
    "message_with_stacktrace": ("Nightly report sent to 12 recipients",
                                "shop.reports in send_nightly"),
    "tags_release_a": ("ZeroDivisionError: division by zero", "POST /orders/{id}/checkout"),
    "tags_release_b": ("ZeroDivisionError: division by zero", "POST /orders/{id}/checkout"),
    "value_error_abc": ("ValueError: invalid literal for int() with base 10: 'abc'",
                        "shop.inventory in parse_quantity"),
    "value_error_xyz": ("ValueError: invalid literal for int() with base 10: 'xyz'",
                        "shop.inventory in parse_quantity"),
    "zero_division": ("ZeroDivisionError: division by zero", "shop.orders in total_per_item"),
    "zero_division_unhandled": ("ZeroDivisionError: division by zero",
                                "shop.orders in total_per_item"),
}


def test_every_corpus_event_has_an_expected_title() -> None:
    assert set(TITLES) == set(NAMES)


@pytest.mark.parametrize("name", sorted(TITLES))
def test_corpus_title_and_culprit(name: str) -> None:
    event = norm(payload(name))
    assert (event.title, event.culprit) == TITLES[name]
    assert event.timestamp == PINNED
    assert re.fullmatch(r"[0-9a-f]{32}", event.event_id)


def test_corpus_event_fields() -> None:
    data = payload("tags_release_a")
    event = norm(data)
    assert event.payload is data
    assert (event.level, event.platform, event.release, event.environment, event.server_name) == (
        "error", "python", "shop@1.4.2", "staging", "web-1")
    assert event.tags == (("region", "eu-west-1"), ("tenant", "acme"))
    assert event.transaction == "POST /orders/{id}/checkout"
    assert event.fingerprint is None
    (exc,) = event.exceptions
    assert (exc.type, exc.value, exc.module, exc.handled) == (
        "ZeroDivisionError", "division by zero", None, True)
    assert exc.frames[-1] == Frame(
        filename="shop/orders.py", abs_path="/srv/app/shop/orders.py", module="shop.orders",
        function="total_per_item", lineno=2, in_app=True, context_line="    return total / count")


def test_corpus_chains_keep_sentry_order() -> None:
    assert [e.type for e in norm(payload("chained_explicit")).exceptions] == [
        "ValueError", "ConfigError"]
    assert [e.type for e in norm(payload("chained_implicit")).exceptions] == [
        "ZeroDivisionError", "KeyError"]
    assert [e.type for e in norm(payload("exception_group")).exceptions] == [
        "ValueError", "ValueError", "ExceptionGroup"]
    assert norm(payload("zero_division_unhandled")).exceptions[-1].handled is False


def test_corpus_messages() -> None:
    logged = norm(payload("logging_template_a"))
    assert (logged.message, logged.message_template, logged.logger) == (
        "Job reindex failed after 3 attempts", "Job %s failed after %d attempts", "shop.jobs")
    plain = norm(payload("message_plain"))
    assert (plain.message, plain.message_template, plain.level) == (
        "Nightly report sent", None, "info")
    threaded = norm(payload("message_with_stacktrace"))
    assert threaded.exceptions == ()
    assert threaded.stacktrace[-1].function == "send_nightly"
    assert norm(payload("custom_fingerprint")).fingerprint == ("{{ default }}", "tenant-a")


@pytest.mark.parametrize(("data", "message"), [
    ([], "event: expected an object, got a list"),
    ({"event_id": "xyz"}, "event_id: expected 32 hex digits, got 'xyz'"),
    ({"event_id": 5}, "event_id: expected 32 hex digits, got 5"),
    ({"event_id": "a" * 33}, "event_id: expected 32 hex digits, got 'aaaaaaaaaaaa"),
    ({"level": "loud"}, "level: unknown level 'loud'"),
    ({"level": 3}, "level: expected a string, got 3"),
    ({"timestamp": "yesterday"},
     "timestamp: expected an RFC 3339 date or epoch seconds, got 'yesterday'"),
    ({"timestamp": True}, "timestamp: expected an RFC 3339 date or epoch seconds, got true"),
    ({"timestamp": -5}, "timestamp: expected an RFC 3339 date or epoch seconds, got -5"),
    ({"timestamp": 10**400}, "timestamp: expected an RFC 3339 date or epoch seconds, "
                             "got a huge integer"),
    (frames({}, {}, {}, {"lineno": "x"}),
     "exception.values[0].stacktrace.frames[3].lineno: expected an integer, got 'x'"),
    (frames({"lineno": 2.5}),
     "exception.values[0].stacktrace.frames[0].lineno: expected an integer, got 2.5"),
    (frames({"lineno": -1}),
     "exception.values[0].stacktrace.frames[0].lineno: expected a non-negative integer, got -1"),
    (frames({"in_app": "yes"}),
     "exception.values[0].stacktrace.frames[0].in_app: expected true or false, got 'yes'"),
    (frames({"function": ["f"]}),
     "exception.values[0].stacktrace.frames[0].function: expected a string, got a list"),
    (frames("frame"), "exception.values[0].stacktrace.frames[0]: expected an object, got 'frame'"),
    ({"exception": "boom"}, "exception: expected an object or a list, got 'boom'"),
    ({"exception": {"values": {}}}, "exception.values: expected a list, got an object"),
    ({"exception": [5]}, "exception[0]: expected an object, got 5"),
    ({"exception": [{"type": 5}]}, "exception[0].type: expected a string, got 5"),
    ({"exception": {"values": [{"type": "E", "stacktrace": {"frames": "x"}}]}},
     "exception.values[0].stacktrace.frames: expected a list, got 'x'"),
    ({"exception": {"values": [{"type": "E", "stacktrace": []}]}},
     "exception.values[0].stacktrace: expected an object, got a list"),
    ({"exception": {"values": [{"type": "E", "mechanism": {"handled": "no"}}]}},
     "exception.values[0].mechanism.handled: expected true or false, got 'no'"),
    ({"stacktrace": {"frames": [{"module": 7}]}},
     "stacktrace.frames[0].module: expected a string, got 7"),
    ({"threads": {"values": [{"stacktrace": {"frames": [None, {"filename": {}}]}}]}},
     "threads.values[0].stacktrace.frames[1].filename: expected a string, got an object"),
    ({"message": 5}, "message: expected a string or an object, got 5"),
    ({"message": {"formatted": 5}}, "message.formatted: expected a string, got 5"),
    ({"logentry": "x"}, "logentry: expected an object, got 'x'"),
    ({"logentry": {"message": 1}}, "logentry.message: expected a string, got 1"),
    ({"tags": "a"}, "tags: expected an object or a list of pairs, got 'a'"),
    ({"tags": [["a"]]}, "tags[0]: expected a [key, value] pair, got a list"),
    ({"tags": [[1, "a"]]}, "tags[0]: expected a string key, got 1"),
    ({"tags": {"a": {"b": 1}}}, "tags.a: expected a string, got an object"),
    ({"fingerprint": "x"}, "fingerprint: expected a list of strings, got 'x'"),
    ({"fingerprint": ["a", {}]}, "fingerprint[1]: expected a string, got an object"),
    ({"release": []}, "release: expected a string, got a list"),
    ({"environment": {}}, "environment: expected a string, got an object"),
    ({"transaction": 5}, "transaction: expected a string, got 5"),
    ({"platform": 1}, "platform: expected a string, got 1"),
    ({"logger": False}, "logger: expected a string, got false"),
])
def test_invalid_events_name_the_field(data: Any, message: str) -> None:
    assert failure(data).startswith(message)


@pytest.mark.parametrize(("level", "expected"), [
    (None, "error"), ("warn", "warning"), ("WARNING", "warning"), ("critical", "fatal"),
    ("log", "info"), *((name, name) for name in LEVELS),
])
def test_levels(level: str | None, expected: str) -> None:
    assert norm({"level": level}).level == expected


@pytest.mark.parametrize(("timestamp", "expected"), [
    ("2026-01-15T12:00:00Z", PINNED),
    ("2026-01-15T12:00:00.250000Z", PINNED + 0.25),
    ("2026-01-15T12:00:00.250000123Z", PINNED + 0.25),
    ("2026-01-15T14:00:00+02:00", PINNED),
    ("2026-01-15T07:00:00-05:00", PINNED),
    ("2026-01-15T12:00:00", PINNED),  # no offset: UTC, as Relay reads it
    (PINNED, PINNED),
    (int(PINNED), PINNED),
    (PINNED + 0.5, PINNED + 0.5),
    ("1768478400.5", PINNED + 0.5),
    (None, RECEIVED),
    (RECEIVED + 59, RECEIVED + 59),  # a little clock skew is believed
    (RECEIVED + 3600, RECEIVED),  # an hour ahead is not
    (RECEIVED * 1000, RECEIVED),  # milliseconds by mistake
])
def test_timestamps(timestamp: Any, expected: float) -> None:
    assert norm({"timestamp": timestamp}).timestamp == pytest.approx(expected, abs=1e-6)


def test_event_ids() -> None:
    first, second = norm({}).event_id, norm({}).event_id
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second
    dashed = "550E8400-E29B-41D4-A716-446655440000"
    assert norm({"event_id": dashed}).event_id == "550e8400e29b41d4a716446655440000"
    assert failure({"event_id": "550e8400-e29b41d4-a716-446655440000"}).startswith("event_id:")


@pytest.mark.parametrize(("tags", "expected"), [
    ({"a": "1", "b": 2, "c": True, "d": None, " ": "x"}, (("a", "1"), ("b", "2"), ("c", "true"))),
    ([["a", "1"], ["b", 2.5], None, ["a", "again"]], (("a", "1"), ("b", "2.5"))),
    ([], ()),
    (None, ()),
])
def test_tags(tags: Any, expected: tuple[tuple[str, str], ...]) -> None:
    assert norm({"tags": tags}).tags == expected


@pytest.mark.parametrize(("data", "message", "template"), [
    ({"message": "plain"}, "plain", None),
    ({"message": {"formatted": "done"}}, "done", None),
    ({"message": {"message": "Hello %s", "params": ["bob"]}}, "Hello bob", "Hello %s"),
    ({"logentry": {"message": "Hello %s", "params": ["bob"]}}, "Hello bob", "Hello %s"),
    ({"logentry": {"message": "%(n)d left", "params": {"n": 3}}}, "3 left", "%(n)d left"),
    ({"logentry": {"message": "%s and %s", "params": ["one"]}}, "%s and %s", "%s and %s"),
    ({"logentry": {"message": "100% done"}}, "100% done", "100% done"),
    ({"logentry": {"message": "%999999999d", "params": [1]}}, "%999999999d", "%999999999d"),
    ({"logentry": {"message": "%s", "params": [["a"]]}}, "%s", "%s"),
    ({"logentry": {"message": "v=%s", "params": 5}}, "v=%s", "v=%s"),
    ({"logentry": {"message": "v=%s", "params": "ab"}}, "v=%s", "v=%s"),
    ({"logentry": {"message": "%(a)s" * 100, "params": {"a": "x"}}}, "%(a)s" * 100, "%(a)s" * 100),
    ({"logentry": {"formatted": "shown", "message": "tmpl %s"}, "message": "other"},
     "shown", "tmpl %s"),
    ({"logentry": {"message": "tmpl"}, "message": "formatted by sdk"}, "formatted by sdk", "tmpl"),
    ({"message": ""}, None, None),
    ({}, None, None),
])
def test_messages(data: dict[str, Any], message: str | None, template: str | None) -> None:
    event = norm(data)
    assert (event.message, event.message_template) == (message, template)


def test_exception_shapes() -> None:
    bare = norm({"exception": [{"type": "E", "value": "v"}]})
    single = norm({"exception": {"type": "E", "value": "v"}})
    wrapped = norm({"exception": {"values": [None, {"type": "E", "value": "v"}]}})
    assert bare.exceptions == single.exceptions == wrapped.exceptions
    assert bare.exceptions[0].frames == ()
    assert norm({"exception": {"values": [{"type": "E", "stacktrace": {}}]}}).title == "E"
    assert norm({"exception": [{"value": 42}]}).title == "Error: 42"
    assert norm({"exception": [{"type": "E", "value": {"k": [1]}}]}).title == 'E: {"k": [1]}'
    assert norm({"exception": [{"type": "E", "value": "\n  first\nsecond"}]}).title == "E: first"


def test_stacktrace_outside_exceptions() -> None:
    top = norm({"message": "m", "stacktrace": {"frames": [
        {"module": "app.a", "function": "f", "in_app": True}, {"module": "lib", "function": "g"}]}})
    assert top.culprit == "app.a in f"
    threads = norm({"threads": [
        {"current": True, "stacktrace": {"frames": [{"filename": "cur.py", "function": "c"}]}},
        {"crashed": True, "stacktrace": {"frames": [{"filename": "boom.py", "function": "b"}]}},
        {"stacktrace": {"frames": [{"filename": "idle.py"}]}},
    ]})
    assert threads.culprit == "boom.py in b"
    assert norm({"stacktrace": {"frames": [{"lineno": 3}]}}).culprit == ""


def test_culprit_falls_back_along_the_chain() -> None:
    event = norm({"exception": {"values": [
        {"type": "Cause", "stacktrace": {"frames": [{"module": "m", "function": "f"}]}},
        {"type": "Top"},
    ]}})
    assert event.culprit == "m in f"


def test_long_values_are_truncated_not_rejected() -> None:
    event = norm({"exception": [{"type": "E", "value": "x" * 20_000}], "transaction": "t" * 500,
                  "tags": {"k" * 300: "v" * 300}, "logger": "l" * 100})
    assert len(event.title) == MAX_TITLE and event.title.endswith("…")
    assert len(event.culprit) == MAX_NAME == len(event.transaction or "")
    assert event.tags == (("k" * 199 + "…", "v" * 199 + "…"),)
    assert len(event.logger or "") == 64
    assert norm({}).title == "<unlabeled event>"


def test_deep_stack_keeps_both_ends() -> None:
    deep = frames(*({"function": f"f{i}"} for i in range(1000)))
    kept = norm(deep).exceptions[0].frames
    assert len(kept) == 250
    assert (kept[0].function, kept[-1].function) == ("f0", "f999")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30,
)
KEYS = st.sampled_from([
    "event_id", "timestamp", "level", "platform", "logger", "message", "logentry", "exception",
    "stacktrace", "threads", "transaction", "release", "environment", "server_name", "tags",
    "fingerprint", "values", "frames", "type", "value", "lineno", "in_app", "params",
])


FRAME = st.fixed_dictionaries({}, optional=dict.fromkeys(
    ("lineno", "in_app", "module", "filename", "abs_path", "function", "context_line"), JSON))
STACKTRACE = JSON | st.fixed_dictionaries({}, optional={"frames": st.lists(FRAME | JSON,
                                                                             max_size=4)})
EXCEPTION = st.fixed_dictionaries({}, optional={
    "type": JSON, "value": JSON, "module": JSON, "stacktrace": STACKTRACE,
    "mechanism": JSON | st.fixed_dictionaries({}, optional={"handled": JSON})})
SHAPED = st.fixed_dictionaries({}, optional={
    "exception": st.fixed_dictionaries({"values": st.lists(EXCEPTION | st.none(), max_size=3)})
    | st.lists(EXCEPTION, max_size=3) | EXCEPTION | JSON,
    "logentry": st.fixed_dictionaries({}, optional=dict.fromkeys(
        ("message", "params", "formatted"), JSON | st.sampled_from(["%s %d", "%(a)s", "x"]))),
    "message": JSON, "stacktrace": STACKTRACE, "tags": JSON, "timestamp": JSON | st.text(),
    "threads": st.lists(st.fixed_dictionaries({}, optional={
        "stacktrace": STACKTRACE, "crashed": JSON, "current": JSON}), max_size=3) | JSON,
    "fingerprint": st.lists(JSON | st.sampled_from(["{{ default }}", "{{type}}"]), max_size=3),
})


def _settles(data: Any) -> None:
    try:
        event = norm(data)
    except InvalidEvent as err:
        assert str(err)
        return
    assert isinstance(event, Event)
    assert len(grouping_hash(event)) == 32


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(KEYS | st.text(max_size=8), JSON, max_size=8))
def test_arbitrary_json_is_an_event_or_invalid(data: dict[str, Any]) -> None:
    _settles(data)


@settings(max_examples=200, deadline=None)
@given(SHAPED)
def test_sentry_shaped_json_is_an_event_or_invalid(data: dict[str, Any]) -> None:
    _settles(data)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NAMES), st.data())
def test_mutated_corpus_events_are_events_or_invalid(name: str, data: st.DataObject) -> None:
    event = payload(name)
    path = data.draw(st.sampled_from(_paths(event)[1:]))
    parent = copy.deepcopy(event)
    target = parent
    for step in path[:-1]:
        target = target[step]
    if data.draw(st.booleans()) and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = data.draw(JSON)
    _settles(parent)


def test_corpus_matches_the_installed_sdk() -> None:
    """The corpus was captured from sentry-sdk; the installed one must still send the same
    shape and group it the same way (rerun tests/data/capture_sentry_events.py if not)."""
    script = DATA / "capture_sentry_events.py"
    run = subprocess.run([sys.executable, str(script), "--print", "zero_division"],
                         capture_output=True, text=True, timeout=60, check=True)
    live, stored = json.loads(run.stdout), payload("zero_division")
    assert set(live) == set(stored)
    live_frames = live["exception"]["values"][0]["stacktrace"]["frames"]
    stored_frames = stored["exception"]["values"][0]["stacktrace"]["frames"]
    assert [set(f) for f in live_frames] == [set(f) for f in stored_frames]
    live_event, stored_event = norm(live), norm(stored)
    assert (live_event.title, live_event.culprit) == (stored_event.title, stored_event.culprit)
    assert grouping_hash(live_event) == grouping_hash(stored_event)
