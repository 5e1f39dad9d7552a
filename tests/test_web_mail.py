"""The mail pages over real HTTP, with mail sent through egen's SMTP listener to a test
smarthost: the log and its search, a message's envelope, DKIM signatures, recipients and
the timeline of every attempt, the bounce it caused, retry and delete (admins only, with
CSRF), the queue with bulk retry, the alerts page and the overview; and bad input
answered with a clear error that changes nothing."""

from __future__ import annotations

import html
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.alerts import store as alert_store
from daemon.app import App
from daemon.web.pages.mail import SearchProblem, parse_search, state_of
from tests.mail_webfixtures import mail_web_app, message
from tests.smtpsink import Sink
from tests.test_delivery import send, wait_status
from tests.webfixtures import VIEWER, browser

XSS = "<script>alert(1)</script>"


@pytest.fixture
async def world(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[App, Sink]]:
    async with mail_web_app(tmp_path, pg_url) as pair:
        yield pair


def queue_ids(page: str) -> list[str]:
    return re.findall(r'data-queue-id="([0-9A-Z]{14})"', page)


async def test_mail_pages_need_a_session(world: tuple[App, Sink]) -> None:
    app, _ = world
    async with browser(app, signed_in=None) as anonymous:
        for path in ("/mail", "/mail/3K9ZZZZZZZZZZZ", "/queue", "/alerts", "/overview"):
            status, headers, _ = await anonymous.get(path)
            assert status == 302 and headers["Location"].startswith("/login"), path


async def test_the_log_lists_mail_newest_first_and_search_narrows_it(
        world: tuple[App, Sink]) -> None:
    app, _ = world
    first = await send(app, ["bob@example.org"], message("Invoice 17", "bob@example.org"))
    second = await send(app, ["Carol@Example.NET", "dave@example.net"],
                        message("Weekly report", "carol@example.net"))
    await wait_status(app, second, {"Carol@Example.NET": "delivered",
                                    "dave@example.net": "delivered"})
    await wait_status(app, first, {"bob@example.org": "delivered"})
    message_id = await app.database.db.pool.fetchval(
        "SELECT message_id FROM mail_messages WHERE id = $1", first)
    async with browser(app) as web:
        status, _, page = await web.get("/mail")
        assert status == 200 and queue_ids(page) == [second, first]
        assert "Invoice 17" in page and "Weekly report" in page
        assert page.count('class="badge state-delivered"') == 2
        searches = {
            "to=bob@example.org": [first], "to=carol@example.net": [second],
            "to=@example.net": [second], "sender=APP@example.com": [second, first],
            "sender=nobody@example.com": [], f"id={first}": [first],
            f"id={first.lower()}": [first], f"id={message_id}": [first],
            f"id={message_id.strip('<>')}": [first], "subject=weekly": [second],
            "subject=invoice&to=carol": [],
        }
        for query, want in searches.items():
            status, _, page = await web.get(f"/mail?{query}")
            assert status == 200 and queue_ids(page) == want, query
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
        yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
        for query, want in ((f"since={tomorrow}", []), (f"until={yesterday}", []),
                            (f"since={yesterday}&until={tomorrow}", [second, first])):
            status, _, page = await web.get(f"/mail?{query}")
            assert status == 200 and queue_ids(page) == want, query
        status, _, page = await web.get("/mail?subject=nothing-like-this")
        assert status == 200 and "No mail matches." in page


async def test_pages_of_the_log_follow_a_cursor(tmp_path: Path, pg_url: str) -> None:
    from daemon.web.pages import mail as pages_mail
    async with mail_web_app(tmp_path, pg_url) as (app, _):
        sent = [await send(app, ["ops@example.org"], message(f"n{i}")) for i in range(5)]
        await app.mail_flusher.drained()
        old, pages_mail.PAGE_SIZE = pages_mail.PAGE_SIZE, 2
        try:
            seen: list[str] = []
            path: str | None = "/mail"
            async with browser(app) as web:
                while path:
                    status, _, page = await web.get(html.unescape(path))
                    assert status == 200
                    seen += queue_ids(page)
                    found = re.search(r'href="([^"]+)" rel="next"', page)
                    path = found.group(1) if found else None
        finally:
            pages_mail.PAGE_SIZE = old
    assert seen == list(reversed(sent))


@pytest.mark.parametrize(("query", "says"), [
    ("since=yesterday", "since: 'yesterday' is not a date"),
    ("until=2026-13-01", "until: '2026-13-01' is not a date"),
    ("since=2026-05-02&until=2026-05-01", "until: must be later than since"),
])
async def test_a_bad_time_range_says_which_field(world: tuple[App, Sink], query: str,
                                                 says: str) -> None:
    app, _ = world
    async with browser(app) as web:
        status, _, page = await web.get(f"/mail?{query}")
    assert status == 400 and says in html.unescape(page)
    typed = query.split("&", maxsplit=1)[0].split("=", maxsplit=1)[1]
    assert "No mail" not in page and f'value="{typed}"' in page


async def test_a_message_shows_its_envelope_signatures_and_every_attempt(
        world: tuple[App, Sink]) -> None:
    app, sink = world
    sink.handler.rules["later@example.org"] = "4xx"
    queue_id = await send(app, ["later@example.org"], message(f"Hello {XSS}"))
    await wait_status(app, queue_id, {"later@example.org": "deferred"})
    sink.handler.rules.clear()
    async with browser(app) as web:
        status, _, page = await web.get(f"/mail/{queue_id}")
        assert status == 200
        assert XSS not in page and html.escape(f"Hello {XSS}") in page
        assert "d=example.com s=ed a=ed25519-sha256" in page
        assert "451" in page and "Mailbox temporarily unavailable" in page
        assert f"127.0.0.1]:{sink.port}" in page
        assert 'id="message-state">deferred' in page
        token = (await web.csrf(f"/mail/{queue_id}"))
        status, headers, _ = await web.post(f"/mail/{queue_id}/retry",
                                            {"csrf_token": token})
        assert status == 303 and headers["Location"] == f"/mail/{queue_id}?done=retry-1"
        await wait_status(app, queue_id, {"later@example.org": "delivered"})
        status, _, page = await web.get(f"/mail/{queue_id}")
    timeline = page[page.index("<h2>Timeline</h2>"):page.index("Notifications sent")]
    order = [m for m in re.findall(r'class="event-([a-z_]+)"', timeline)]
    assert order == ["accepted", "deferred", "retry", "delivered"]
    assert "by web user ada" in timeline and "2.0.0 Ok: stored" in timeline
    assert 'id="message-state">delivered' in page


async def test_a_bounce_is_linked_from_the_message_it_reports_on(
        world: tuple[App, Sink]) -> None:
    app, sink = world
    sink.handler.rules["gone@example.org"] = "5xx"
    queue_id = await send(app, ["gone@example.org"], message("Lost"))
    await wait_status(app, queue_id, {"gone@example.org": "bounced"})
    [bounce] = await sink.handler.wait_for(1)
    assert bounce.sender == "" and bounce.recipients == ["app@example.com"]
    await app.mail_flusher.drained()
    async with browser(app) as web:
        _, _, page = await web.get(f"/mail/{queue_id}")
        notices = re.findall(r'<a href="/mail/([0-9A-Z]{14})">([^<]*)</a>', page)
        assert len(notices) == 1 and "Undelivered Mail" in notices[0][1]
        _, _, page = await web.get(f"/mail/{notices[0][0]}")
    assert "&lt;&gt; (null sender)" in page and "app@example.com" in page


async def test_retry_and_delete_need_an_admin_and_a_csrf_token(
        world: tuple[App, Sink]) -> None:
    app, sink = world
    sink.handler.rules["later@example.org"] = "4xx"
    queue_id = await send(app, ["later@example.org"], message("Held"))
    await wait_status(app, queue_id, {"later@example.org": "deferred"})
    pool = app.database.db.pool

    async def log() -> list[str]:
        return [r["event"] for r in await pool.fetch(
            "SELECT event FROM mail_events WHERE message_id = $1 ORDER BY id", queue_id)]

    before = await log()
    async with browser(app, signed_in=VIEWER) as viewer:
        _, _, page = await viewer.get(f"/mail/{queue_id}")
        assert "Retry now" not in page          # the buttons are for admins
        token = await viewer.csrf("/mail")
        for action in ("retry", "delete"):
            status, _, _ = await viewer.post(f"/mail/{queue_id}/{action}",
                                             {"csrf_token": token})
            assert status == 403, action
    async with browser(app) as admin:
        for action in ("retry", "delete"):
            status, _, _ = await admin.post(f"/mail/{queue_id}/{action}", {})
            assert status == 403, action
        assert await log() == before
        token = await admin.csrf("/mail")
        status, headers, _ = await admin.post(f"/mail/{queue_id}/delete",
                                              {"csrf_token": token})
        assert status == 303 and headers["Location"] == f"/mail/{queue_id}?done=deleted"
        status, _, page = await admin.get(f"/mail/{queue_id}")
        assert status == 200 and 'id="message-state">deleted' in page
        assert "no longer in the queue" in page and "by web user ada" in page
        status, _, page = await admin.post(f"/mail/{queue_id}/retry", {"csrf_token": token})
        assert status == 404 and "no message" in page
    assert await log() == [*before, "deleted"]
    assert await pool.fetchval("SELECT count(*) FROM mail_messages") == 0


async def test_the_queue_lists_waiting_mail_and_retries_the_chosen(
        world: tuple[App, Sink]) -> None:
    app, sink = world
    sink.handler.rules.update({"a@example.org": "4xx", "b@example.org": "4xx"})
    held = [await send(app, [to], message(to)) for to in ("a@example.org", "b@example.org")]
    done = await send(app, ["c@example.org"], message("gone through"))
    for queue_id, to in zip(held, ("a@example.org", "b@example.org"), strict=True):
        await wait_status(app, queue_id, {to: "deferred"})
    await wait_status(app, done, {"c@example.org": "delivered"})
    sink.handler.rules.clear()
    async with browser(app) as web:
        status, _, page = await web.get("/queue")
        assert status == 200 and queue_ids(page) == held       # oldest first
        assert page.count("state-deferred") == 2 and "in " in page
        token = await web.csrf("/queue")
        status, headers, _ = await web.post("/queue/retry", {"csrf_token": token,
                                                             "message": held[1]})
        assert status == 303 and headers["Location"] == "/queue?done=retry-1"
        await wait_status(app, held[1], {"b@example.org": "delivered"})
        status, _, page = await web.get("/queue")
        assert queue_ids(page) == held[:1]
        status, _, _ = await web.post("/queue/retry", {"csrf_token": token,
                                                       "all": "deferred"})
        assert status == 303
        await wait_status(app, held[0], {"a@example.org": "delivered"})
        _, _, page = await web.get("/queue")
    assert queue_ids(page) == [] and "Nothing is waiting" in page


@pytest.mark.parametrize("path", ["/mail/NOTANID", "/mail/3K9ZZZZZZZZZZZ",
                                  "/mail/" + "A" * 300])
async def test_an_unknown_message_is_404(world: tuple[App, Sink], path: str) -> None:
    app, _ = world
    async with browser(app) as web:
        status, _, page = await web.get(path)
    assert status == 404 and "No such message" in page


async def test_the_overview_counts_the_days_mail(world: tuple[App, Sink]) -> None:
    app, sink = world
    sink.handler.rules["gone@example.org"] = "5xx"
    ok = await send(app, ["ops@example.org"], message("fine"))
    bad = await send(app, ["gone@example.org"], message("lost"))
    await wait_status(app, ok, {"ops@example.org": "delivered"})
    await wait_status(app, bad, {"gone@example.org": "bounced"})
    await sink.handler.wait_for(2)                 # the mail and the bounce
    await app.mail_flusher.drained()
    async with browser(app) as web:
        status, _, page = await web.get("/overview")
    assert status == 200

    def figure(name: str) -> str:
        found = re.search(rf'id="{name}">.*?class="big"[^>]*>([\d,]+)<', page, re.S)
        assert found, name
        return found.group(1)

    # The bounce is mail too: accepted and (once the sink took it) delivered.
    assert figure("mail-accepted") == "3" and figure("mail-bounced") == "1"
    assert figure("mail-delivered") in ("1", "2") and figure("mail-deferred") == "0"
    # egen reports the bounce to its own error tracker: one new issue, one event.
    assert figure("errors-new") == "1" and figure("errors-events") == "1"


async def test_the_alerts_page_shows_each_send_with_its_attempts(
        world: tuple[App, Sink]) -> None:
    app, _ = world
    pool = app.database.db.pool
    async with pool.acquire() as conn:
        send_id = await alert_store.add_send(conn, f"ops{XSS}", b"{}", now=time.time(),
                                             notifications=[], alerts=3)
    async with browser(app) as web:
        status, _, page = await web.get("/alerts")
        assert status == 200 and f'data-send="{send_id}"' in page
        assert XSS not in page and html.escape(f"ops{XSS}") in page
        status, _, page = await web.get("/alerts?channel=nobody")
    assert status == 200 and "No alerts in this period" in page


def test_the_state_word_puts_the_worst_news_first() -> None:
    assert state_of({"delivered": 2}) == "delivered"
    assert state_of({"delivered": 1, "bounced": 1}) == "bounced"
    assert state_of({"delivered": 1, "deferred": 1, "bounced": 1}) == "deferred"
    assert state_of({"deleted": 1}) == "deleted"
    assert state_of({}) == "unknown"


@given(st.dictionaries(st.sampled_from(["to", "sender", "id", "subject", "since", "until",
                                        "tz_offset", "other"]), st.text(max_size=40)))
def test_any_query_string_is_a_search_or_a_precise_problem(query: dict[str, str]) -> None:
    try:
        search, params = parse_search(query)
    except SearchProblem as err:
        assert str(err).split(":", 1)[0] in ("since", "until")
        return
    assert set(params) <= {"to", "sender", "id", "subject", "since", "until", "tz_offset"}
    if search.since and search.until:
        assert search.since < search.until
