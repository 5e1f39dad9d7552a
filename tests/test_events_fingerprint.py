"""Grouping pinned with events the real sentry-sdk produced (tests/data/sentry_events): what
must stay one issue, what must split, and the message parameterizer it relies on."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.events.pipeline.fingerprint import (
    GROUPING_VERSION,
    SUPPORTED_VERSIONS,
    grouping_components,
    grouping_hash,
    normalize_path,
)
from daemon.events.pipeline.model import Event
from daemon.events.pipeline.normalize import normalize_event
from daemon.events.pipeline.parameterize import parameterize

CORPUS = Path(__file__).parent / "data" / "sentry_events"


def payload(name: str) -> dict[str, Any]:
    return json.loads((CORPUS / f"{name}.json").read_text(encoding="utf-8"))


def event(name_or_data: str | dict[str, Any]) -> Event:
    data = payload(name_or_data) if isinstance(name_or_data, str) else name_or_data
    return normalize_event(data, received=1_768_478_500.0)


def key(name_or_data: str | dict[str, Any]) -> str:
    return grouping_hash(event(name_or_data))


def frames_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [frame for exc in data["exception"]["values"]
            for frame in exc.get("stacktrace", {}).get("frames", [])]


# The hashes of GROUPING_VERSION are stored with every issue: changing one splits issues.
# A change to the rules belongs in a new version (see SUPPORTED_VERSIONS), not here.
PINNED = {
    "zero_division": "3d66c3ca5600de66fb9ab7891759f9b9",
    "key_error_price_a": "c0b417222ddd9c3d3afc23192c2723cc",
    "message_numbers_a": "4ffaaec463977f21da496932f1f26ec8",
    "logging_template_a": "83397d877984aac9036c499f1789b593",
    "custom_fingerprint": "ed2d3b5f118baffab1f909d68c9b4cb4",
    "chained_explicit": "a94ef48db8dcad12f50e5313e399bf46",
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_version_1_hashes_are_frozen(name: str) -> None:
    assert key(name) == PINNED[name]


def test_hash_shape_and_versions() -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", key("zero_division"))
    assert GROUPING_VERSION in SUPPORTED_VERSIONS
    assert grouping_hash(event("zero_division"), GROUPING_VERSION) == key("zero_division")
    with pytest.raises(ValueError, match="grouping version 99 is not supported"):
        grouping_components(event("zero_division"), 99)


@pytest.mark.parametrize(("first", "second"), [
    ("value_error_abc", "value_error_xyz"),
    ("key_error_price_a", "key_error_price_b"),
    ("library_declined_a", "library_declined_b"),
])
def test_same_bug_with_different_values_is_one_issue(first: str, second: str) -> None:
    assert event(first).exceptions[-1].value != event(second).exceptions[-1].value
    assert key(first) == key(second)


def test_same_type_from_another_call_site_is_another_issue() -> None:
    price, stock = event("key_error_price_a"), event("key_error_stock")
    assert (price.title, price.exceptions[-1].type) == (stock.title, stock.exceptions[-1].type)
    assert key("key_error_price_a") != key("key_error_stock")
    assert key("zero_division") != key("value_error_abc")


def test_line_numbers_and_path_prefixes_do_not_split() -> None:
    v1, v2 = payload("line_shift_v1"), payload("line_shift_v2")
    assert [f["lineno"] for f in frames_of(v1)] != [f["lineno"] for f in frames_of(v2)]
    assert frames_of(v1)[-1]["abs_path"] == "/srv/app-v1/shop/cart.py"
    assert frames_of(v2)[-1]["abs_path"] == "/srv/app-v2/shop/cart.py"
    assert key(v1) == key(v2)
    for field in ("module", "filename"):  # no module: the paths decide, stripped of the prefix
        for data in (v1, v2):
            for frame in frames_of(data):
                del frame[field]
        assert key(v1) == key(v2)
        assert "frame:shop/cart.py:apply_coupon" in grouping_components(event(v1))


def test_context_lines_do_not_count() -> None:
    edited = payload("zero_division")
    for frame in frames_of(edited):
        frame["context_line"] = "# reformatted"
        frame["pre_context"] = []
    assert key(edited) == key("zero_division")


def test_release_environment_tags_and_transaction_do_not_split() -> None:
    a, b = event("tags_release_a"), event("tags_release_b")
    assert (a.release, b.release) == ("shop@1.4.2", "shop@1.4.3")
    assert key("tags_release_a") == key("tags_release_b") == key("zero_division")


def test_messages_differing_in_numbers_are_one_issue() -> None:
    assert event("message_numbers_a").message != event("message_numbers_b").message
    assert key("message_numbers_a") == key("message_numbers_b")
    assert key("message_numbers_a") != key("message_plain")
    assert grouping_components(event("message_numbers_a")) == [
        "logger:", "message:Processed <int> items in <float>s"]


def test_logged_messages_group_by_template() -> None:
    a, b = event("logging_template_a"), event("logging_template_b")
    assert a.message != b.message
    assert key("logging_template_a") == key("logging_template_b")
    assert grouping_components(a) == ["logger:shop.jobs", "message:Job %s failed after %d attempts"]
    other_logger = payload("logging_template_a")
    other_logger["logger"] = "shop.api"
    assert key(other_logger) != key("logging_template_a")


def test_message_with_a_stack_trace_groups_by_message() -> None:
    assert grouping_components(event("message_with_stacktrace")) == [
        "logger:", "message:Nightly report sent to <int> recipients"]


def test_custom_fingerprint_extends_the_default() -> None:
    custom, plain = event("custom_fingerprint"), event("zero_division")
    assert key("custom_fingerprint") != key("zero_division")
    assert grouping_components(custom) == [*grouping_components(plain), "custom:tenant-a"]
    for spelling in ("{{default}}", "{{  default\t}}", "{{ DEFAULT }}"):
        respelled = payload("custom_fingerprint")
        respelled["fingerprint"] = [spelling, "tenant-a"]
        assert key(respelled) == key("custom_fingerprint")
    other_tenant = payload("custom_fingerprint")
    other_tenant["fingerprint"] = ["{{ default }}", "tenant-b"]
    assert key(other_tenant) != key("custom_fingerprint")


def test_custom_fingerprint_without_default_replaces_it() -> None:
    a, b = payload("zero_division"), payload("value_error_abc")
    for data in (a, b):
        data["fingerprint"] = ["payments-down"]
    assert key(a) == key(b)
    a["fingerprint"] = ["{{ type }}", "{{ transaction }}", "{{ function }}", "{{ nope }}"]
    assert grouping_components(event(a)) == [
        "variable:type=ZeroDivisionError", "variable:transaction=",
        "variable:function=total_per_item", "custom:{{ nope }}"]
    b["fingerprint"] = []
    assert key(b) == key("value_error_abc")


def test_chained_exceptions_cover_every_type() -> None:
    explicit = grouping_components(event("chained_explicit"))
    assert [c for c in explicit if c.startswith("type:")] == ["type:ValueError", "type:ConfigError"]
    implicit = grouping_components(event("chained_implicit"))
    assert [c for c in implicit if c.startswith("type:")] == [
        "type:ZeroDivisionError", "type:KeyError"]
    only_top = payload("chained_explicit")
    del only_top["exception"]["values"][0]
    assert key(only_top) != key("chained_explicit")
    other_cause = payload("chained_explicit")
    other_cause["exception"]["values"][0]["type"] = "TypeError"
    assert key(other_cause) != key("chained_explicit")


def test_only_in_app_frames_count_when_there_are_any() -> None:
    components = grouping_components(event("library_declined_a"))
    assert components == ["type:PaymentDeclined", "frame:shop.views:dispatch",
                          "frame:shop.payments:charge"]
    unmarked = payload("library_declined_a")
    for frame in frames_of(unmarked):
        frame.pop("in_app", None)
    assert "frame:payclient.http:_raise_for_status" in grouping_components(event(unmarked))


def test_exceptions_without_frames_count_their_parameterized_value() -> None:
    def bare(type_: str, value: str) -> dict[str, Any]:
        return {"exception": [{"type": type_, "value": value}]}

    assert key(bare("KeyError", "'user-17'")) == key(bare("KeyError", "'user-42'"))
    assert key(bare("KeyError", "'x'")) != key(bare("IndexError", "'x'"))
    assert key(bare("Timeout", "after 30s")) != key(bare("Timeout", "connection refused"))
    group = grouping_components(event("exception_group"))
    assert group[:2] == ["type:ValueError", "value:order o-<int> has no lines"]


def test_recursion_depth_does_not_split() -> None:
    def recursion(depth: int) -> dict[str, Any]:
        loop = [{"module": "app.tree", "function": "walk", "in_app": True, "lineno": 7}] * depth
        return {"exception": [{"type": "RecursionError", "stacktrace": {"frames": [
            {"module": "app.main", "function": "main", "in_app": True}, *loop]}}]}

    assert key(recursion(3)) == key(recursion(300))
    assert grouping_components(event(recursion(3))) == [
        "type:RecursionError", "frame:app.main:main", "frame:app.tree:walk"]


def test_events_with_nothing_to_group_by_share_one_issue() -> None:
    assert grouping_components(event({})) == ["fallback"]
    assert key({"level": "info"}) == key({"tags": {"a": "b"}})


@pytest.mark.parametrize(("path", "expected"), [
    ("/srv/app-v1/shop/cart.py", "shop/cart.py"),
    ("/srv/app-v2/shop/cart.pyc", "shop/cart.py"),
    ("shop/cart.py", "shop/cart.py"),
    ("cart.py", "cart.py"),
    ("/srv/app/.venv/lib/python3.11/site-packages/payclient/http.py", "payclient/http.py"),
    ("/usr/lib/python3/dist-packages/requests/adapters.py", "requests/adapters.py"),
    ("C:\\Apps\\shop\\site-packages\\lib\\x.py", "lib/x.py"),
    ("https://cdn.example.com/static/js/app.js?v=17#main", "js/app.js"),
    ("", ""),
])
def test_normalize_path(path: str, expected: str) -> None:
    assert normalize_path(path) == expected


@pytest.mark.parametrize(("message", "expected"), [
    ("Processed 17 items in 3.2s", "Processed <int> items in <float>s"),
    ("invalid literal for int() with base 10: 'abc'",
     "invalid literal for int() with base <int>: <quoted>"),
    ('no such key "sku-17"', "no such key <quoted>"),
    ("mail to bob@example.com bounced", "mail to <email> bounced"),
    ("GET https://api.example.com/v1/users?id=5 failed.", "GET <url> failed."),
    ("from 10.0.0.17 and 2001:db8::ff00:42:8329 and ::1", "from <ip> and <ip> and <ip>"),
    ("request 550e8400-e29b-41d4-a716-446655440000", "request <uuid>"),
    ("object at 0x7f3a9c and commit deadbeef12", "object at <hex> and commit <hex>"),
    ("at 2026-01-15T12:00:00.25Z, 2026-01-15 and 12:34:56", "at <date>, <date> and <date>"),
    ("Date: Thu, 15 Jan 2026 12:00:00 +0000", "Date: <date>"),
    ("x=-5 y=+3 ratio 1e-05 took 17ms", "x=<int> y=+<int> ratio <float> took <int>ms"),
    ("<User 17> at row 4.", "<User <int>> at row <int>."),
    ("utf8 sha256 v1.2.3 o'clock it's", "utf8 sha256 v1.2.3 o'clock it's"),
    ("Job %s failed after %d attempts", "Job %s failed after %d attempts"),
])
def test_parameterize(message: str, expected: str) -> None:
    assert parameterize(message) == expected


TOKENS = st.sampled_from([
    *"0123456789abcdefxXeE.:-+@/'\"\n <>_zT,Z[]()=%",
    "http://", "0x", "::", "2026-01-15", "12:34:56", "a@b.c", "<int>", "<quoted>", "<ip>",
    "10.0.0.1", "Thu, 15 Jan 2026 ", "550e8400-e29b-41d4-a716-446655440000", "deadbeef1",
])


@settings(max_examples=200, deadline=None)
@given(st.lists(TOKENS, max_size=40).map("".join) | st.text(max_size=60))
def test_parameterize_is_idempotent(message: str) -> None:
    once = parameterize(message)
    assert parameterize(once) == once


WORDS = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
SEPARATORS = st.sampled_from([" ", ", ", "=", " (", ") ", ": ", " / ", " [", "] "])
INTS = st.integers().map(str)
FLOATS = st.floats(allow_nan=False, allow_infinity=False).map(repr)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.one_of(WORDS, st.none()), SEPARATORS), min_size=1, max_size=8),
       st.sampled_from([INTS, FLOATS]), st.data())
def test_messages_differing_only_in_numbers_parameterize_alike(
        template: list[tuple[str | None, str]], numbers: st.SearchStrategy[str],
        data: st.DataObject) -> None:
    def render() -> str:
        return "".join((word if word is not None else data.draw(numbers)) + separator
                       for word, separator in template)

    first, second = render(), render()
    assert parameterize(first) == parameterize(second)
    if any(word is None for word, _ in template):
        assert "<int>" in parameterize(first) or "<float>" in parameterize(first)


def test_grouping_ignores_what_normalize_keeps_for_display() -> None:
    data = payload("zero_division")
    changed = copy.deepcopy(data)
    changed.update(server_name="web-2", environment="staging", level="fatal", platform="other",
                   breadcrumbs={"values": [{"message": "clicked"}]}, timestamp=1.0)
    assert key(changed) == key(data)
    assert payload("breadcrumbs")["breadcrumbs"]["values"]
    assert key("breadcrumbs") == key("key_error_price_a")
