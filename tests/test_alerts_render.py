"""Alert rendering: subjects, the mail message as the relay will queue and sign it, and both
webhook bodies. Untrusted titles must never reach a header as anything but one line of text."""

from __future__ import annotations

import email
import email.policy
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.alerts.render import (
    Alert,
    Frame,
    IssueSummary,
    render_email,
    render_generic,
    render_slack,
    subject,
)

NOW = 1_700_000_000.0                           # Tue, 14 Nov 2023 22:13:20 +0000
SEEN = datetime(2026, 11, 25, 16, 23, 14, 987654, tzinfo=UTC)
URL = "https://egen.example.com/api/v1/issues/17"
FRAME = Frame(function="checkout", module="shop.views", filename="app/views.py", lineno=42)
HEADERS = {"From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted", "X-Egen-Alert",
           "MIME-Version", "Content-Type"}


def make_issue(**overrides) -> IssueSummary:
    fields = {"id": 17, "project": "dev", "title": "ZeroDivisionError: division by zero",
              "culprit": "shop.views in checkout", "level": "error", "status": "unresolved",
              "count": 130, "first_seen": SEEN - timedelta(days=1), "last_seen": SEEN,
              "environment": "production", "release": "shop@1.4.2", "url": URL,
              "frames": (FRAME,)}
    fields.update(overrides)
    return IssueSummary(**fields)


def alert(kind="new", detail="", **overrides) -> Alert:
    return Alert(kind, make_issue(**overrides), detail)


def mail(alerts) -> bytes:
    return render_email(alerts, sender="egen <egen@relay.example.com>",
                        recipients=["ops@example.com", "dev@example.org"],
                        hostname="relay.example.com", now=NOW)


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def part(msg: EmailMessage, subtype: str) -> str:
    """One alternative, decoded, with the wire's CRLF back to LF."""
    body = msg.get_body((subtype,))
    assert body is not None
    return body.get_content().replace("\r\n", "\n")


def bodies(raw: bytes) -> tuple[str, str]:
    msg = parse(raw)
    return part(msg, "plain"), part(msg, "html")


# -- subject ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "words"), [
    ("new", "New issue"), ("regressed", "Regression"), ("spike", "Spike"),
    ("critical", "Critical issue"), ("test", "Test alert")])
def test_single_subject_names_kind_project_and_title(kind, words):
    assert subject([alert(kind)]) == f"[egen] {words} in dev: ZeroDivisionError: division by zero"


def test_long_title_is_shortened_to_120_characters():
    title = subject([alert(title="x" * 119 + "yz")]).removeprefix("[egen] New issue in dev: ")
    assert len(title) == 120
    assert title == "x" * 119 + "…"
    assert subject([alert(title="x" * 120)]).endswith(": " + "x" * 120)


def test_digest_subject_counts_kinds_in_fixed_order_and_lists_projects():
    alerts = [alert("spike", project="shop"), alert("new"), alert("new", project="shop")]
    assert subject(alerts) == "[egen] 3 alerts: 2 new issues, 1 spike (dev, shop)"
    alerts = [alert("test"), alert("critical", project="b"), alert("regressed", project="a"),
              alert("regressed", project="b")]
    assert subject(alerts) == ("[egen] 4 alerts: 2 regressions, 1 critical issue, "
                               "1 test alert (a, b, dev)")


def test_subject_collapses_whitespace_and_control_characters():
    title = "boom\r\nBcc: evil@example.com\n\t  x\x0b\x0cy\x1cz\u2028w\x00v"
    assert subject([alert(title=title)]) == (
        "[egen] New issue in dev: boom Bcc: evil@example.com x y z w\ufffdv")


# -- e-mail ----------------------------------------------------------------------------------

def test_email_headers():
    msg = parse(mail([alert("new"), alert("spike"), alert("new")]))
    assert set(msg.keys()) == HEADERS
    assert msg["From"] == "egen <egen@relay.example.com>"
    assert msg["To"] == "ops@example.com, dev@example.org"
    assert msg["Subject"] == "[egen] 3 alerts: 2 new issues, 1 spike (dev)"
    assert msg["Date"].datetime == datetime.fromtimestamp(NOW, UTC)
    assert re.fullmatch(r"<\S+@relay\.example\.com>", msg["Message-ID"])
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Egen-Alert"] == "new,spike"


@pytest.mark.parametrize("title", [
    "boom\r\nBcc: evil@example.com",
    "boom\nBcc: evil@example.com\n\nbody",
    "boom\rBcc: evil@example.com",
    "boom =?utf-8?q?x=0D=0ABcc:_evil@example.com?= end",
    "boom=?us-ascii?q?x=0ABcc:_evil@example.com?=",
])
def test_title_cannot_inject_headers(title):
    raw = mail([alert(title=title)])
    msg = parse(raw)
    assert set(msg.keys()) == HEADERS
    assert len(msg.get_all("Subject")) == 1
    assert "Bcc" not in msg
    assert "\r" not in msg["Subject"] and "\n" not in msg["Subject"]
    # A subject too long for the first line is folded before its first word, and the
    # parser keeps that fold's space.
    assert msg["Subject"].lstrip() == subject([alert(title=title)])
    assert b"\nBcc" not in raw


def test_email_is_multipart_alternative_with_text_then_html():
    msg = parse(mail([alert()]))
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert all(part.get_content_charset() == "utf-8" for part in parts)


def test_every_line_ends_with_crlf_and_output_is_7bit():
    raw = mail([alert(title="Ünïcode ☃ " + "long " * 60, detail="a\nb"), alert("spike")])
    assert raw.endswith(b"\r\n")
    assert re.search(rb"(?<!\r)\n", raw) is None
    assert re.search(rb"\r(?!\n)", raw) is None
    assert raw.isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_non_ascii_title_round_trips():
    title = "Ünïcode ☃ in Straße"
    raw = mail([alert(title=title, culprit="módulo ☃")])
    assert raw.isascii()                      # short lines too: 8bit would need 8BITMIME
    assert parse(raw)["Subject"] == f"[egen] New issue in dev: {title}"
    text, html_body = bodies(raw)
    assert title in text and "módulo ☃" in text
    assert title in html_body


def test_text_body_shows_every_field():
    text, _ = bodies(mail([alert(detail="130 events in the last 5 minutes")]))
    lines = text.splitlines()
    assert lines[0] == "New issue in dev: 130 events in the last 5 minutes"
    assert lines[1] == "ZeroDivisionError: division by zero"
    for expected in ["Project:     dev", "Culprit:     shop.views in checkout",
                     "Level:       error", "Events:      130",
                     "First seen:  2026-11-24 16:23:14 UTC",
                     "Last seen:   2026-11-25 16:23:14 UTC",
                     "Environment: production", "Release:     shop@1.4.2"]:
        assert f"  {expected}" in lines
    assert "  app/views.py:42 in checkout (shop.views)" in lines
    assert lines[-1] == URL


def test_times_are_shown_in_utc():
    local = datetime(2026, 11, 25, 17, 23, 14, tzinfo=timezone(timedelta(hours=1)))
    text, _ = bodies(mail([alert(last_seen=local)]))
    assert "  Last seen:   2026-11-25 16:23:14 UTC" in text.splitlines()


def test_naive_times_are_taken_as_utc_not_local_time(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        naive = datetime(2026, 11, 25, 16, 23, 14)
        text, _ = bodies(mail([alert(last_seen=naive)]))
        generic = orjson.loads(render_generic([alert(last_seen=naive)], delivery_id="d"))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert "  Last seen:   2026-11-25 16:23:14 UTC" in text.splitlines()
    assert generic["alerts"][0]["issue"]["last_seen"] == "2026-11-25T16:23:14Z"


def test_optional_lines_are_omitted():
    text, html_body = bodies(mail([alert(environment=None, release=None, culprit="",
                                         url=None, frames=())]))
    for label in ("Environment", "Release", "Culprit", "Frames", "http"):
        assert label not in text
        assert label not in html_body
    assert "<a " not in html_body


def test_frames_are_limited_to_five_and_formatted():
    frames = tuple(Frame(f"fn{i}", "mod", "app/f.py", i) for i in range(7))
    text, html_body = bodies(mail([alert(frames=frames)]))
    for i in range(5):
        assert f"  app/f.py:{i} in fn{i} (mod)" in text.splitlines()
        assert f"app/f.py:{i} in fn{i} (mod)" in html_body
    assert "fn5" not in text and "fn6" not in text
    assert "fn5" not in html_body


@pytest.mark.parametrize(("frame", "line"), [
    (Frame("run", "shop.views", None, 7), "shop.views:7 in run"),
    (Frame("run", None, "app/x.py", None), "app/x.py in run"),
    (Frame(None, "shop.views", "app/x.py", 3), "app/x.py:3 (shop.views)"),
    (Frame("run", None, None, None), "in run"),
    (Frame(None, None, None, None), "(unknown frame)"),
])
def test_frames_with_missing_parts(frame, line):
    text, _ = bodies(mail([alert(frames=(frame,))]))
    assert f"  {line}" in text.splitlines()


def test_html_escapes_every_value():
    raw = mail([alert(title="<script>alert(1)</script>", culprit='a "b" & c',
                      detail="<b>x</b>", release="<img src=x>")])
    _, html_body = bodies(raw)
    assert "<script>" not in html_body and "<b>" not in html_body and "<img" not in html_body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_body
    assert "a &quot;b&quot; &amp; c" in html_body


def test_html_links_only_web_urls():
    _, html_body = bodies(mail([alert(url='https://x.example/i?a=1&b="2"')]))
    assert '<a href="https://x.example/i?a=1&amp;b=&quot;2&quot;">' in html_body
    _, html_body = bodies(mail([alert(url="javascript:alert(1)")]))
    assert "<a " not in html_body
    assert "javascript:alert(1)" in html_body


def test_digest_lists_every_alert_in_order():
    titles = ["First: boom", "Second: bang", "Third: crash"]
    text, html_body = bodies(mail([alert(title=title) for title in titles]))
    assert text.startswith("3 alerts: 3 new issues\n")
    assert [text.index(t) for t in titles] == sorted(text.index(t) for t in titles)
    assert [html_body.index(t) for t in titles] == sorted(html_body.index(t) for t in titles)


def test_no_recipients_is_an_error():
    with pytest.raises(ValueError, match="no recipients"):
        render_email([alert()], sender="egen@x", recipients=[], hostname="x", now=NOW)


# -- Slack -----------------------------------------------------------------------------------

def test_slack_single_alert_links_the_title():
    body = orjson.loads(render_slack([alert(detail="130 events in the last 5 minutes")]))
    assert set(body) == {"text"}
    assert body["text"].splitlines() == [
        f"*New issue* in dev: <{URL}|ZeroDivisionError: division by zero>",
        "130 events in the last 5 minutes", "shop.views in checkout", "Events: 130"]


def test_slack_escapes_control_characters_of_mrkdwn():
    body = orjson.loads(render_slack([alert(title="a < b & c > d\n<!channel>", url=None,
                                            culprit="<@U123>")]))
    first, culprit, _ = body["text"].splitlines()
    assert first == "*New issue* in dev: a &lt; b &amp; c &gt; d &lt;!channel&gt;"
    assert culprit == "&lt;@U123&gt;"


def test_slack_link_target_cannot_break_out():
    body = orjson.loads(render_slack([alert(url="https://x.example/a|b>c", title="t")]))
    assert body["text"].splitlines()[0] == "*New issue* in dev: <https://x.example/a%7Cb%3Ec|t>"


def test_slack_digest_has_one_block_per_alert():
    body = orjson.loads(render_slack([alert("new"), alert("spike", project="shop")]))
    blocks = body["text"].split("\n\n")
    assert blocks[0] == "*2 alerts*"
    assert blocks[1].startswith("*New issue* in dev: ")
    assert blocks[2].startswith("*Spike* in shop: ")
    assert len(blocks) == 3


# -- generic webhook -------------------------------------------------------------------------

def test_generic_round_trip():
    frames = (FRAME, Frame(None, None, "x.py", None))
    body = orjson.loads(render_generic([alert(detail="why", frames=frames, release=None)],
                                       delivery_id="d-1"))
    assert body == {
        "type": "egen.alert", "delivery_id": "d-1", "digest": False,
        "alerts": [{"kind": "new", "detail": "why", "issue": {
            "id": 17, "project": "dev", "title": "ZeroDivisionError: division by zero",
            "culprit": "shop.views in checkout", "level": "error", "status": "unresolved",
            "count": 130, "first_seen": "2026-11-24T16:23:14Z",
            "last_seen": "2026-11-25T16:23:14Z", "environment": "production",
            "release": None, "url": URL,
            "frames": [{"function": "checkout", "module": "shop.views",
                        "filename": "app/views.py", "lineno": 42},
                       {"function": None, "module": None, "filename": "x.py",
                        "lineno": None}]}}]}


def test_generic_digest_keeps_order_and_raw_values():
    local = datetime(2026, 1, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    body = orjson.loads(render_generic(
        [alert("spike", title="a\nb <c>"), alert("new", first_seen=local)],
        delivery_id="d-2"))
    assert body["digest"] is True
    assert [a["kind"] for a in body["alerts"]] == ["spike", "new"]
    assert body["alerts"][0]["issue"]["title"] == "a\nb <c>"
    assert body["alerts"][1]["issue"]["first_seen"] == "2025-12-31T23:00:00Z"
    assert isinstance(body["alerts"][0]["issue"]["count"], int)


# -- empty input -----------------------------------------------------------------------------

@pytest.mark.parametrize("render", [
    subject,
    render_slack,
    mail,
    lambda alerts: render_generic(alerts, delivery_id="d"),
])
def test_empty_input_is_an_error(render):
    with pytest.raises(ValueError, match="no alerts to render"):
        render([])


# -- property --------------------------------------------------------------------------------

# Plain text, plus fragments built to look like line breaks, headers and encoded words.
HOSTILE = st.one_of(st.text(), st.lists(st.sampled_from(
    ["=?", "?=", "utf-8?q?", "=0D=0A", "=0A", "_", "Bcc: x@example.com", " ", "\t", "\r\n",
     "\n", "\r", "\x0b", "\x85", "\u2028", "é", "☃", "<", ">", "&", "x"]),
    max_size=40).map("".join))


@settings(max_examples=300, deadline=None)
@given(title=HOSTILE, culprit=HOSTILE)
def test_any_title_yields_one_clean_subject(title, culprit):
    alerts = [alert(title=title, culprit=culprit)]
    raw = mail(alerts)
    msg = parse(raw)
    assert set(msg.keys()) == HEADERS
    assert len(msg.get_all("Subject")) == 1
    assert "\r" not in msg["Subject"] and "\n" not in msg["Subject"]
    assert "\r" not in subject(alerts) and "\n" not in subject(alerts)
    assert re.search(rb"(?<!\r)\n", raw) is None
    generic = orjson.loads(render_generic(alerts, delivery_id="p"))
    assert generic["alerts"][0]["issue"]["title"] == title
    assert generic["alerts"][0]["issue"]["culprit"] == culprit
