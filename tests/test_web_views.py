"""What the web UI builds from stored events before a template renders it: masking of
credentials (daemon.web.pages.masking), the inline SVG charts (daemon.web.pages.charts) and
the event page's view model (daemon.web.pages.event_view).

Masking is what keeps passwords and tokens off the pages and out of the JSON download, so
each kind of place a secret hides in is checked. Charts are checked through their SVG
structure (parsed as XML), not their exact text. The event view takes client-sent JSON, so
besides the shapes SDKs send, a property test feeds it arbitrary JSON and requires that it
never raises.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import Markup

from daemon.web.pages import charts, event_view, masking
from daemon.web.pages.event_view import EventView, FrameGroup
from daemon.web.pages.masking import MASK, mask, mask_query, mask_text, sensitive

# --- masking -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "password", "PASSWORD", "db_passwd", "pwd", "client_secret", "access_token", "csrftoken",
    "X-CSRF-Token", "Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie",
    "sessionid", "X-Api-Key", "apikey", "aws_access_key_id", "private-key", "credentials",
    "signature", "SENTRY_DSN", "jwt", "bearer"])
def test_sensitive_names(name: str) -> None:
    assert sensitive(name)


@pytest.mark.parametrize("name", ["username", "email", "Content-Type", "User-Agent", "page",
                                  "id", "host", "x-request-id"])
def test_ordinary_names(name: str) -> None:
    assert not sensitive(name)


def test_mask_text_hides_url_passwords() -> None:
    masked = mask_text("connect to postgres://app:hunter2@db.internal/app failed")
    assert "hunter2" not in masked
    assert f"postgres://app:{MASK}@db.internal/app" in masked


def test_mask_text_keeps_urls_without_password() -> None:
    text = "GET https://api.example/v1/items?page=2 and http://user@host/x"
    assert mask_text(text) == text


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "Basic", "token"])
def test_mask_text_hides_bearer_credentials(scheme: str) -> None:
    masked = mask_text(f"Authorization: {scheme} eyJhbGciOi.J9x_y-z+/=")
    assert "eyJhbGciOi" not in masked
    assert f"{scheme} {MASK}" in masked


def test_mask_text_keeps_short_words_after_token() -> None:
    assert mask_text("the token expired") == "the token expired"


def test_mask_query_masks_sensitive_parameters_only() -> None:
    masked = mask_query("page=2&api_key=abc123&q=hello+world&Token=zz")
    assert "abc123" not in masked and "zz" not in masked
    assert dict(parse_qsl(masked)) == {"page": "2", "api_key": MASK, "q": "hello world",
                                       "Token": MASK}


def test_mask_query_without_sensitive_names_is_unchanged() -> None:
    query = "a=1+2&b=%20&c&d="
    assert mask_query(query) == query


def test_mask_query_masks_url_passwords_in_values() -> None:
    masked = mask_query("next=postgres://u:hunter2@db/x&session=s1")
    assert "hunter2" not in masked and "s1" not in masked


def test_mask_walks_objects_lists_and_header_pairs() -> None:
    data = {"request": {
        "headers": [["Authorization", "Bearer abcdefghijkl"], ["Cookie", "sid=1"],
                    ["X-Request-Id", "r-1"]],
        "data": {"user": "ann", "password": "hunter2", "nested": [{"api_key": "k"}]},
        "query_string": "page=1&token=t0k3n",
        "cookies": {"sessionid": "abc", "theme": "dark"},
    }, "extra": {"dsn": "https://key@sentry.example/1", "count": 3, "ok": True, "none": None}}
    masked = mask(data)
    request = masked["request"]
    assert request["headers"] == [["Authorization", MASK], ["Cookie", MASK],
                                  ["X-Request-Id", "r-1"]]
    assert request["data"] == {"user": "ann", "password": MASK, "nested": [{"api_key": MASK}]}
    assert "t0k3n" not in request["query_string"] and "page=1" in request["query_string"]
    assert request["cookies"] == {"sessionid": MASK, "theme": MASK}
    assert masked["extra"] == {"dsn": MASK, "count": 3, "ok": True, "none": None}


def test_mask_leaves_empty_sensitive_values_visible() -> None:
    assert mask({"password": "", "token": None, "secret": [], "auth": {}}) == {
        "password": "", "token": None, "secret": [], "auth": {}}


def test_mask_keeps_only_the_names_inside_an_object_under_a_sensitive_name() -> None:
    # cookies: which ones were sent helps, their values are not for the page
    assert mask({"auth": {"user": "ann", "pass": "x"}}) == {"auth": {"user": MASK,
                                                                    "pass": MASK}}


def test_mask_does_not_change_its_input() -> None:
    data = {"headers": {"Cookie": "a=b"}, "list": [["token", "x"]], "url": "ftp://u:p@h/"}
    before = copy.deepcopy(data)
    masked = mask(data)
    assert data == before
    assert masked != data


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"k": value}
    return value


def _leaf(value: Any) -> tuple[int, Any]:
    depth = 0
    while isinstance(value, dict):
        value = value["k"]
        depth += 1
    return depth, value


def test_mask_keeps_values_up_to_the_depth_bound() -> None:
    assert _leaf(mask(_nested(masking.MAX_DEPTH, "leaf"))) == (masking.MAX_DEPTH, "leaf")


def test_mask_masks_whole_below_the_depth_bound() -> None:
    assert _leaf(mask(_nested(masking.MAX_DEPTH + 5, "leaf"))) == (masking.MAX_DEPTH + 1, MASK)


def test_mask_of_a_very_deep_value_does_not_recurse_without_bound() -> None:
    assert _leaf(mask(_nested(50_000, "leaf")))[1] == MASK


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30,
)
SENSITIVE_KEYS = st.sampled_from(["password", "Authorization", "cookies", "api_key", "token",
                                  "query_string", "headers", "url"])
MASKABLE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.sampled_from(["postgres://a:b@h/x", "Bearer abcdefghijk", "a=1&token=2"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(SENSITIVE_KEYS | st.text(max_size=8), children, max_size=4)
    | st.tuples(SENSITIVE_KEYS, children).map(list),
    max_leaves=30,
)


def _sensitive_entries(value: Any) -> list[Any]:
    """Every value under a sensitive name in an object, anywhere in `value`."""
    found: list[Any] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if sensitive(key) and isinstance(item, dict):
                found += list(item.values())        # names kept, every value masked
            elif sensitive(key) and item not in (None, "", [], {}):
                found.append(item)
            else:
                found += _sensitive_entries(item)
    elif isinstance(value, list):
        for item in value:
            found += _sensitive_entries(item)
    return found


@settings(max_examples=200, deadline=None)
@given(MASKABLE)
def test_mask_leaves_no_value_under_a_sensitive_name(value: Any) -> None:
    masked = mask(value)
    assert all(item == MASK for item in _sensitive_entries(masked))
    assert mask(masked) == masked


# --- charts --------------------------------------------------------------------------------

def svg(markup: Markup) -> ET.Element:
    assert isinstance(markup, Markup)
    root = ET.fromstring(str(markup))
    assert root.tag == "svg"
    return root


def bars(root: ET.Element) -> list[ET.Element]:
    """The drawn bars: rects that are neither the baseline nor a tooltip target."""
    return [r for r in root.iter("rect") if r.get("class") not in ("base", "hit")]


def heights(root: ET.Element) -> list[float]:
    return [float(r.get("height", "nan")) for r in bars(root)]


def test_sparkline_draws_one_bar_per_nonzero_count() -> None:
    root = svg(charts.sparkline([0, 3, 0, 6, 1]))
    assert len(bars(root)) == 3
    assert [float(r.get("x", "nan")) for r in bars(root)] == sorted(
        float(r.get("x", "nan")) for r in bars(root))


def test_sparkline_heights_scale_to_the_peak() -> None:
    root = svg(charts.sparkline([10, 5, 20]))
    low, mid, peak = heights(root)
    assert mid == pytest.approx(peak / 4) and low == pytest.approx(peak / 2)
    view_height = float(root.get("viewBox", "").split()[3])
    assert peak <= view_height
    for rect in bars(root):          # bars stand on the baseline
        assert float(rect.get("y", "nan")) + float(rect.get("height", "nan")) == \
            pytest.approx(view_height - 1, abs=0.01)


def test_sparkline_keeps_a_single_event_visible() -> None:
    assert min(heights(svg(charts.sparkline([1000, 1])))) >= 1.0


@pytest.mark.parametrize("counts", [[], [0, 0, 0], [-3, 0]])
def test_sparkline_without_events_draws_only_the_baseline(counts: list[int]) -> None:
    root = svg(charts.sparkline(counts))
    assert bars(root) == []
    assert [r.get("class") for r in root.iter("rect")] == ["base"]


def test_sparkline_label_is_escaped() -> None:
    markup = charts.sparkline([1, 2], label='<script>alert("x")</script>')
    assert "<script>" not in markup
    root = svg(markup)
    assert root.find(".//script") is None
    assert root.get("aria-label", "").startswith('<script>alert("x")</script>')
    assert "at most 2" in root.get("aria-label", "")


def buckets(counts: list[int], *, day: bool = False) -> list[dict[str, object]]:
    return [{"start": f"2026-01-{10 + n:02d}T00:00:00+00:00" if day
             else f"2026-01-15T{n:02d}:00:00+00:00", "count": c}
            for n, c in enumerate(counts)]


def test_bar_chart_has_one_column_per_bucket() -> None:
    root = svg(charts.bar_chart(buckets([4, 0, 2, 8]), unit="hour"))
    columns = root.findall("g")
    assert len(columns) == 4
    assert all(len(column.findall("title")) == 1 for column in columns)
    assert len(bars(root)) == 3           # the empty hour has a column but no bar
    widths = {r.get("width") for r in root.iter("rect") if r.get("class") == "hit"}
    assert len(widths) == 1


def test_bar_chart_heights_scale_to_the_peak() -> None:
    root = svg(charts.bar_chart(buckets([2, 8, 4]), unit="hour"))
    small, peak, mid = heights(root)
    assert small == pytest.approx(peak / 4, abs=0.01)
    assert mid == pytest.approx(peak / 2, abs=0.01)
    assert peak < float(root.get("viewBox", "").split()[3])


def test_bar_chart_tooltips_word_the_unit_and_count() -> None:
    root = svg(charts.bar_chart(buckets([1, 3]), unit="hour"))
    titles = [t.text for t in root.iter("title")]
    assert titles == ["2026-01-15 00:00 UTC: 1 event", "2026-01-15 01:00 UTC: 3 events"]
    days = svg(charts.bar_chart(buckets([0, 2], day=True), unit="day"))
    assert [t.text for t in days.iter("title")] == ["2026-01-10: 0 events",
                                                    "2026-01-11: 2 events"]


@pytest.mark.parametrize("counts", [[], [0, 0]])
def test_bar_chart_without_events(counts: list[int]) -> None:
    root = svg(charts.bar_chart(buckets(counts), unit="day"))
    assert bars(root) == []
    assert len(root.findall("g")) == len(counts)
    assert "at most 0" in root.get("aria-label", "")


def test_bar_chart_unit_is_escaped_in_the_label() -> None:
    markup = charts.bar_chart(buckets([1]), unit="<script>x</script>")
    assert "<script>" not in markup
    assert svg(markup).find(".//script") is None


@pytest.mark.parametrize(("share", "filled"), [(0.25, 25.0), (0.0, 0.0), (1.0, 100.0),
                                               (-0.5, 0.0), (7.0, 100.0)])
def test_share_bar_is_filled_to_the_share_clamped(share: float, filled: float) -> None:
    rects = list(svg(charts.share_bar(share)).iter("rect"))
    assert [r.get("class") for r in rects] == ["base", None]
    assert float(rects[1].get("width", "nan")) == pytest.approx(filled)
    assert float(rects[0].get("width", "nan")) == 100.0


def test_charts_use_no_inline_style() -> None:
    for markup in (charts.sparkline([1, 2]), charts.bar_chart(buckets([1]), unit="hour"),
                   charts.share_bar(0.5)):
        assert all("style" not in element.attrib for element in svg(markup).iter())


# --- event view ----------------------------------------------------------------------------

def frame(path: str, function: str = "f", **extra: Any) -> dict[str, Any]:
    return {"filename": path, "abs_path": path, "function": function, **extra}


def exception_with(*frames: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"exception": {"values": [{"type": "E", "value": "boom",
                                      "stacktrace": {"frames": list(frames)}, **extra}]}}


def shape(groups: list[FrameGroup]) -> list[tuple[bool, list[str], bool]]:
    """(in app, functions most recent first, expanded) per group."""
    return [(g.in_app, [f.function for f in g.frames], g.expanded) for g in groups]


@pytest.mark.parametrize("data", [None, [], "event", 3, {}])
def test_build_of_nothing_is_an_empty_view(data: Any) -> None:
    view = event_view.build(data)
    assert isinstance(view, EventView)
    assert view.message is None and view.exceptions == [] and view.request is None
    assert view.breadcrumbs == [] and view.contexts == [] and view.sdk == []
    assert view.tags == [] and view.user == [] and view.details == []


def test_python_library_frames_are_folded_between_app_frames() -> None:
    data = exception_with(
        frame("/srv/app/main.py", "main"),
        frame("/venv/lib/python3.11/site-packages/django/core/handlers.py", "dispatch"),
        frame("/venv/lib/python3.11/site-packages/django/views.py", "view"),
        frame("/srv/app/shop/views.py", "checkout"),
        frame("/usr/lib/python3.11/json/decoder.py", "decode"),
    )
    (exception,) = event_view.build(data).exceptions
    assert exception.frame_count == 5
    assert shape(exception.groups) == [
        (False, ["decode"], False),
        (True, ["checkout"], True),
        (False, ["view", "dispatch"], False),
        (True, ["main"], True),
    ]


def test_node_internal_frames_are_library_frames() -> None:
    data = exception_with(
        frame("node:internal/process/task_queues", "processTicksAndRejections"),
        frame("internal/timers.js", "listOnTimeout"),
        frame("/app/node_modules/express/lib/router/layer.js", "handle"),
        frame("/app/src/server.js", "route"),
    )
    groups = event_view.build(data).exceptions[0].groups
    assert shape(groups) == [
        (True, ["route"], True),
        (False, ["handle", "listOnTimeout", "processTicksAndRejections"], False),
    ]


def test_in_app_flag_wins_except_for_node_internals() -> None:
    data = exception_with(
        frame("/srv/app/a.py", "vendored", in_app=False),
        frame("/venv/lib/python3.11/site-packages/x.py", "marked", in_app=True),
        frame("node:internal/modules/cjs/loader", "claimed", in_app=True),
    )
    frames = {f.function: f.in_app for g in event_view.build(data).exceptions[0].groups
              for f in g.frames}
    assert frames == {"vendored": False, "marked": True, "claimed": False}


def test_without_app_frames_every_frame_shows() -> None:
    data = exception_with(frame("node:internal/a", "a"), frame("/x/site-packages/b.py", "b"))
    groups = event_view.build(data).exceptions[0].groups
    assert shape(groups) == [(False, ["b", "a"], True)]


def test_deep_stack_keeps_the_most_recent_frames() -> None:
    limit = event_view.MAX_FRAMES
    data = exception_with(*(frame("/srv/app/a.py", f"f{n}") for n in range(limit + 50)))
    exception = event_view.build(data).exceptions[0]
    functions = [f.function for g in exception.groups for f in g.frames]
    assert exception.frame_count == limit + 50
    assert len(functions) == limit
    assert functions[0] == f"f{limit + 49}" and functions[-1] == "f50"


def test_frame_source_context_is_numbered_around_the_line() -> None:
    data = exception_with(frame("/srv/app/a.py", "f", lineno=10, colno=4,
                                pre_context=["a", "b"], context_line="c", post_context=["d"],
                                vars={"x": 1, "items": [1, 2]}))
    view = event_view.build(data).exceptions[0].groups[0].frames[0]
    assert view.context == [(8, "a", False), (9, "b", False), (10, "c", True), (11, "d", False)]
    assert (view.lineno, view.colno) == (10, 4)
    assert dict(view.vars)["x"] == "1"
    assert dict(view.vars)["items"].replace(" ", "").replace("\n", "") == "[1,2]"


def test_frame_without_names_falls_back() -> None:
    data = exception_with({"module": "shop.cart", "lineno": True}, {})
    frames = [f for g in event_view.build(data).exceptions[0].groups for f in g.frames]
    assert [(f.where, f.function, f.lineno) for f in frames] == [
        ("<unknown>", "?", None), ("shop.cart", "?", None)]


def test_exception_chain_top_level_first_with_mechanism() -> None:
    data = {"exception": {"values": [
        {"type": "KeyError", "value": "'k'"},
        {"type": "ConfigError", "value": "bad", "module": "shop.config",
         "mechanism": {"type": "logging", "handled": False}},
    ]}}
    top, cause = event_view.build(data).exceptions
    assert (top.type, top.value, top.module, top.mechanism, top.handled) == (
        "ConfigError", "bad", "shop.config", "logging", False)
    assert (cause.type, cause.mechanism, cause.handled) == ("KeyError", None, None)


def test_exception_without_type_is_an_error() -> None:
    (exception,) = event_view.build({"exception": [{"value": 42}]}).exceptions
    assert (exception.type, exception.value) == ("Error", "42")


def test_message_event_shows_its_thread_stack() -> None:
    data = {"message": "hello", "threads": {"values": [
        {"id": 1, "stacktrace": {"frames": [frame("/srv/app/idle.py", "idle")]}},
        {"id": 2, "crashed": True, "stacktrace": {"frames": [frame("/srv/app/w.py", "work")]}},
    ]}}
    (trace,) = event_view.build(data).exceptions
    assert trace.type == "Stack trace"
    assert shape(trace.groups) == [(True, ["work"], True)]


def test_top_level_stacktrace_wins_and_exceptions_win_over_it() -> None:
    stack = {"frames": [frame("/srv/app/s.py", "top")]}
    assert event_view.build({"stacktrace": stack}).exceptions[0].type == "Stack trace"
    both = {"stacktrace": stack, **exception_with(frame("/srv/app/e.py", "exc"))}
    assert [e.type for e in event_view.build(both).exceptions] == ["E"]


@pytest.mark.parametrize(("data", "message"), [
    ({"message": "plain"}, "plain"),
    ({"logentry": {"message": "n=%s", "formatted": "n=3"}}, "n=3"),
    ({"logentry": {"message": "n=%s"}}, "n=%s"),
    ({"message": {"formatted": "legacy"}}, "legacy"),
    ({"message": ""}, None),
    ({"message": 7}, "7"),
])
def test_message(data: dict[str, Any], message: str | None) -> None:
    assert event_view.build(data).message == message


def test_breadcrumbs() -> None:
    data = {"breadcrumbs": {"values": [
        {"timestamp": 1_768_478_400.5, "category": "auth", "message": "logged in"},
        {"timestamp": "2026-01-15T12:00:01Z", "type": "http", "level": "warning",
         "data": {"url": "http://pay.example/charges", "status_code": 402}},
        "not a crumb",
        {"timestamp": "yesterday"},
    ]}}
    first, second, third = event_view.build(data).breadcrumbs
    assert (first.time, first.type, first.level, first.category, first.message) == (
        "2026-01-15T12:00:00.500000+00:00", "default", "info", "auth", "logged in")
    assert (second.time, second.type, second.level) == (
        "2026-01-15T12:00:01+00:00", "http", "warning")
    assert dict(second.data) == {"url": "http://pay.example/charges", "status_code": "402"}
    assert third.time is None


def test_breadcrumbs_as_a_bare_list_keep_the_latest() -> None:
    crumbs = [{"message": str(n)} for n in range(event_view.MAX_BREADCRUMBS + 10)]
    shown = event_view.build({"breadcrumbs": crumbs}).breadcrumbs
    assert len(shown) == event_view.MAX_BREADCRUMBS
    assert shown[-1].message == str(event_view.MAX_BREADCRUMBS + 9)
    assert shown[0].message == "10"


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_breadcrumb_time_at_the_edge_of_the_calendar(stamp: str) -> None:
    assert event_view.build({"breadcrumbs": [{"timestamp": stamp}]}).breadcrumbs[0].time is None


def test_request_is_shown_masked() -> None:
    data = {"request": {
        "url": "https://app:hunter2@shop.example/checkout", "method": "POST",
        "query_string": "page=2&token=t0k3n",
        "headers": {"Authorization": "Bearer abcdefghijkl", "Cookie": "sid=s3cr3t",
                    "X-Request-Id": "r-1"},
        "cookies": {"sessionid": "s3cr3t", "theme": "dark"},
        "data": {"card": "4242", "password": "pw"},
        "env": {"REMOTE_ADDR": "10.0.0.1"},
    }}
    request = event_view.build(mask(data)).request
    assert request is not None
    assert request.url == f"https://app:{MASK}@shop.example/checkout"
    assert request.method == "POST"
    assert request.query == [("page", "2"), ("token", MASK)]
    assert dict(request.headers) == {"Authorization": MASK, "Cookie": MASK,
                                     "X-Request-Id": "r-1"}
    assert not any("s3cr3t" in name or "s3cr3t" in value or "dark" in value
                   for name, value in request.cookies)
    assert request.data is not None and "4242" in request.data and '"pw"' not in request.data
    assert request.env == [("REMOTE_ADDR", "10.0.0.1")]


def test_request_pairs_and_cookie_header_forms() -> None:
    data = {"request": {"headers": [["Accept", "text/html"], ["broken"]],
                        "cookies": "theme=dark; lang=en", "query_string": [["a", "1"]]}}
    request = event_view.build(data).request
    assert request is not None
    assert request.headers == [("Accept", "text/html")]
    assert request.cookies == [("theme", "dark"), ("lang", "en")]
    assert request.query == [("a", "1")]
    assert request.url is None and request.data is None


def test_empty_request_is_not_shown() -> None:
    assert event_view.build({"request": {}}).request is None
    assert event_view.build({"request": "GET /"}).request is None


def test_contexts_known_ones_first_without_type_rows() -> None:
    data = {"contexts": {
        "zeta": {"a": 1}, "trace": {"trace_id": "t"}, "runtime": {"name": "CPython",
                                                                  "type": "runtime"},
        "alpha": {"b": 2}, "os": {"name": "Linux"}, "empty": {"type": "x"}, "bad": "text",
    }}
    contexts = event_view.build(data).contexts
    assert [name for name, _ in contexts] == ["os", "runtime", "trace", "alpha", "zeta"]
    assert dict(contexts)["runtime"] == [("name", "CPython")]


def test_sdk() -> None:
    data = {"sdk": {"name": "sentry.python", "version": "2.75.0",
                    "integrations": ["logging", "stdlib"],
                    "packages": [{"name": "pypi:sentry-sdk", "version": "2.75.0"}, "junk"]}}
    assert dict(event_view.build(data).sdk) == {
        "name": "sentry.python", "version": "2.75.0", "integrations": "logging, stdlib",
        "packages": "pypi:sentry-sdk 2.75.0"}


def test_tags_extra_user_and_details() -> None:
    data = {"tags": [["region", "eu"], ["tenant", 7]], "extra": {"order": {"id": 1}},
            "user": {"id": 42, "email": "a@example.com"}, "platform": "python",
            "server_name": "web-1", "environment": "", "level": "error"}
    view = event_view.build(data)
    assert view.tags == [("region", "eu"), ("tenant", "7")]
    assert view.extra[0][0] == "order" and '"id"' in view.extra[0][1]
    assert view.user == [("id", "42"), ("email", "a@example.com")]
    assert dict(view.details) == {"platform": "python", "server name": "web-1",
                                  "level": "error"}


def test_long_text_is_cut() -> None:
    view = event_view.build({"message": "x" * 10_000})
    assert view.message is not None
    assert len(view.message) == event_view.MAX_TEXT and view.message.endswith("…")


KNOWN = ("exception", "breadcrumbs", "request", "contexts", "sdk", "stacktrace", "threads",
         "logentry", "message", "user", "tags", "extra", "platform", "level")
FRAME = st.fixed_dictionaries({}, optional={
    key: JSON for key in ("filename", "abs_path", "module", "function", "lineno", "colno",
                          "in_app", "pre_context", "context_line", "post_context", "vars")})
STACKTRACE = JSON | st.fixed_dictionaries({"frames": st.lists(FRAME | JSON, max_size=4)})
SHAPED = st.fixed_dictionaries({}, optional={
    "exception": JSON | st.fixed_dictionaries({"values": st.lists(
        st.fixed_dictionaries({}, optional={"type": JSON, "value": JSON, "mechanism": JSON,
                                            "stacktrace": STACKTRACE}) | JSON, max_size=3)}),
    "stacktrace": STACKTRACE,
    "threads": JSON | st.fixed_dictionaries({"values": st.lists(st.fixed_dictionaries(
        {}, optional={"crashed": JSON, "current": JSON, "stacktrace": STACKTRACE}),
        max_size=3)}),
    "breadcrumbs": JSON | st.lists(st.fixed_dictionaries({}, optional={
        key: JSON for key in ("timestamp", "type", "category", "level", "message", "data")})
        | JSON, max_size=3),
    "request": JSON | st.fixed_dictionaries({}, optional={
        key: JSON for key in ("url", "method", "query_string", "headers", "cookies", "data",
                              "env")}),
    "contexts": JSON | st.dictionaries(st.text(max_size=8), JSON, max_size=4),
    "sdk": JSON | st.fixed_dictionaries({}, optional={
        key: JSON for key in ("name", "version", "integrations", "packages")}),
    **{key: JSON for key in ("logentry", "message", "user", "tags", "extra", "platform")},
})


@settings(max_examples=200, deadline=None)
@given(JSON | st.dictionaries(st.sampled_from(KNOWN) | st.text(max_size=8), JSON, max_size=8))
def test_build_never_raises_on_arbitrary_json(data: Any) -> None:
    assert isinstance(event_view.build(data), EventView)


@settings(max_examples=200, deadline=None)
@given(SHAPED)
def test_build_never_raises_on_sentry_shaped_json(data: dict[str, Any]) -> None:
    view = event_view.build(mask(data))
    assert isinstance(view, EventView)
    for exception in view.exceptions:
        assert sum(len(g.frames) for g in exception.groups) <= exception.frame_count
