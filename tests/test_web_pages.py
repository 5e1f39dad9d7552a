"""The pages' content over real HTTP, fed by the real sentry-sdk: what the issue list,
the issue page, the event page and the projects page show, the forms that change issues
(bulk, resolve in next release, ignore until N events), keyset pagination, escaping and
masking of everything an event carries, and bad input answered with a clear error that
changes nothing."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import sentry_sdk

from daemon.app import App
from tests.eventfixtures import dsn, issue_rows, run_sdk, stored
from tests.webfixtures import Browser, browser, hidden_fields, web_app

pytestmark = pytest.mark.slow

XSS = "<script>alert(1)</script>"
CUSTOMER_PASSWORD = "hunter2"


def charge_card(amount: int, password: str) -> None:
    card_token = f"tok_live_{amount:06d}"    # a local named like a secret
    note = XSS
    raise ValueError(f"card declined for {amount} {note} ({len(card_token + password)})")


def checkout(release: str = "shop@1.0", email: str = "ann@example.com") -> Callable[[], None]:
    """What a web app's error handler reports: a user, tags, breadcrumbs, the request
    (with secrets in headers and cookies) and the exception with its local variables."""
    def action() -> None:
        sentry_sdk.set_user({"id": email.split("@", maxsplit=1)[0], "email": email,
                             "ip_address": "203.0.113.9"})
        sentry_sdk.set_tag("customer", XSS)
        sentry_sdk.set_tag("region", "eu-1")
        sentry_sdk.add_breadcrumb(category="db", message="SELECT * FROM carts", level="info")
        sentry_sdk.add_breadcrumb(category="http", message=f"POST /pay {XSS}",
                                  level="warning")
        sentry_sdk.get_isolation_scope().add_event_processor(_request)
        try:
            charge_card(42, password=CUSTOMER_PASSWORD)
        except ValueError:
            sentry_sdk.capture_exception()
    return action


def _request(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    event["request"] = {
        "url": "https://shop.example.com/pay", "method": "POST",
        "query_string": "step=2&api_key=k-123456",
        "headers": {"Authorization": "Bearer sk-live-999", "User-Agent":
                    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                    "Chrome/120.0.0.0 Safari/537.36", "X-Trace": XSS},
        "cookies": {"sessionid": "s-777", "theme": "solarized-7"}}
    return event


async def send(app: App, action: Callable[[], None], **options: Any) -> None:
    options.setdefault("release", "shop@1.0")
    options.setdefault("environment", "production")
    await run_sdk(dsn(app), action, **options)
    await stored(app)


async def message(app: App, text: str, **options: Any) -> None:
    await send(app, lambda: sentry_sdk.capture_message(text, level="error"), **options)


def issue_links(page: str) -> list[int]:
    return [int(m) for m in re.findall(r'class="issue-link" href="/issues/(\d+)"', page)]


async def page_of(client: Browser, path: str) -> str:
    status, _, page = await client.get(path)
    assert status == 200, (path, page[:2000])
    return page


@pytest.fixture
async def app(pg_url: str, tmp_path: Path) -> Any:
    async with web_app(tmp_path, pg_url) as app:
        yield app


async def test_the_list_shows_issues_with_counts_users_and_a_sparkline(app: App) -> None:
    await send(app, checkout(email="ann@example.com"))
    await send(app, checkout(email="bob@example.com"))
    await message(app, "disk full", environment="staging", release="shop@2.0")
    async with browser(app) as client:
        page = await page_of(client, "/issues")
        declined, disk = _by_title(await issue_rows(app), "ValueError", "disk full")
        assert issue_links(page) == [disk["id"], declined["id"]]       # last seen first
        row = _row(page, declined["id"])
        assert 'data-label="Events">2<' in row and 'data-label="Users">2<' in row
        assert "charge_card" in row                                       # culprit
        assert row.count("<svg") == 1 and "badge new" in row
        assert XSS not in page and html.escape(XSS) in page              # title escaped
        # Sorted by users, the two-user issue comes first.
        assert issue_links(await page_of(client, "/issues?sort=users")) == [
            declined["id"], disk["id"]]


def _by_title(rows: list[dict[str, Any]], *starts: str) -> list[dict[str, Any]]:
    return [next(r for r in rows if r["title"].startswith(s)) for s in starts]


def _row(page: str, issue_id: int) -> str:
    match = re.search(rf'<tr class="issue" data-issue="{issue_id}">(.*?)</tr>', page, re.S)
    assert match, f"no row for issue {issue_id}"
    return match[1]


async def test_filters_and_search_narrow_the_list(app: App) -> None:
    await send(app, checkout(email="ann@example.com"))
    await message(app, "disk full", environment="staging", release="shop@2.0")
    await message(app, "queue stuck", release="shop@2.0")
    rows = {r["title"].split(":")[0]: r["id"] for r in await issue_rows(app)}
    declined, disk, stuck = rows["ValueError"], rows["disk full"], rows["queue stuck"]
    cases = {
        "/issues?environment=staging": [disk],
        "/issues?release=shop@2.0&sort=first_seen": [stuck, disk],
        "/issues?q=disk": [disk],
        "/issues?q=user.email:ann@example.com": [declined],
        "/issues?q=region:eu-1": [declined],
        "/issues?q=release:shop@2.0 !environment:staging": [stuck],
        "/issues?q=is:unresolved level:error&project=app": [stuck, disk, declined],
        '/issues?q="queue stuck"': [stuck],
    }
    async with browser(app) as client:
        for path, expected in cases.items():
            assert issue_links(await page_of(client, path)) == expected, path
        # The search box keeps what was typed, escaped.
        page = await page_of(client, "/issues?q=%3Cb%3Ex")
        assert 'value="&lt;b&gt;x"' in page


@pytest.mark.parametrize(("query", "says"), [
    ("is:sleeping", "is:"), ('title:"unclosed', "quote"), ("level:loud", "level"),
    ("sort=nope", None)])
async def test_a_bad_search_says_what_is_wrong(app: App, query: str, says: str | None) -> None:
    await message(app, "disk full")
    async with browser(app) as client:
        path = f"/issues?{query}" if says is None else f"/issues?q={query}"
        status, _, page = await client.get(path)
        assert status == 400, page[:500]
        problem = re.search(r'<p class="problem" role="alert">(.*?)</p>', page, re.S)
        assert problem, page[:2000]
        if says:
            assert says in html.unescape(problem[1])
        assert issue_links(page) == []


WORDS = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay"]


async def test_pages_of_the_list_follow_a_cursor(app: App) -> None:
    pool = app.database.db.pool
    for i in range(30):
        await message(app, f"job {WORDS[i % 10]} {WORDS[i // 10]} failed")
    async with browser(app) as client:
        first = await page_of(client, "/issues")
        assert len(issue_links(first)) == 25
        more = re.search(r'<a[^>]*href="([^"]*after=[^"]*)"[^>]*>', first)
        assert more, "no link to the next page"
        second = await page_of(client, html.unescape(more[1]))
        assert len(issue_links(second)) == 5
        assert not set(issue_links(first)) & set(issue_links(second))
        ids = [r["id"] for r in await pool.fetch(
            "SELECT id FROM issues ORDER BY last_seen DESC, id DESC")]
        assert issue_links(first) + issue_links(second) == ids
        status, _, page = await client.get("/issues?after=garbage")
        assert status == 400 and "after" in page


async def test_bulk_resolve_takes_issues_off_the_unresolved_list(app: App) -> None:
    for text in ("a failed", "b failed", "c failed"):
        await message(app, text)
    ids = {r["title"]: r["id"] for r in await issue_rows(app)}
    async with browser(app) as client:
        token = await client.csrf()
        session = client.session
        async with session.post("/issues/bulk", allow_redirects=False, data=[
                ("csrf_token", token), ("action", "resolve"), ("back", "/issues"),
                ("issue", str(ids["a failed"])), ("issue", str(ids["c failed"]))]) as answer:
            assert answer.status == 303 and answer.headers["Location"] == "/issues"
        assert issue_links(await page_of(client, "/issues")) == [ids["b failed"]]
        assert sorted(issue_links(await page_of(client, "/issues?q=is:resolved"))) == sorted(
            [ids["a failed"], ids["c failed"]])
        status, _, page = await client.post("/issues/bulk", {
            "csrf_token": token, "action": "explode", "issue": str(ids["b failed"])})
        assert status == 400 and "resolve, ignore or reopen" in page
        assert [r["status"] for r in await issue_rows(app) if r["title"] == "b failed"] == [
            "unresolved"]


async def test_the_issue_page_shows_counts_releases_tags_and_the_latest_event(app: App) -> None:
    await send(app, checkout(email="ann@example.com"), release="shop@1.0")
    await send(app, checkout(email="bob@example.com"), release="shop@1.1")
    [issue] = await issue_rows(app)
    async with browser(app) as client:
        page = await page_of(client, f"/issues/{issue['id']}")
    text = html.unescape(page)
    assert re.search(r'Events</span><span class="big">2<', page)
    assert re.search(r'Users</span><span class="big">2<', page)
    assert "in shop@1.0" in re.sub(r"<[^>]+>", "", text)        # first release
    assert "shop@1.1" in text                                     # last release
    assert "production" in text
    assert page.count("<svg") >= 2                                # 24 h and 30 d charts
    for key in ("browser", "os", "region", "customer", "release"):
        assert f"<h3>{key} " in page, key
    assert "Chrome" in text
    # The latest event: in-app frames with their variables, breadcrumbs, the request.
    assert "charge_card" in page and "checkout" in page
    assert 'class="crumbs-table"' in page and "SELECT * FROM carts" in page
    assert "https://shop.example.com/pay" in text
    # Escaped everywhere, never markup.
    assert XSS not in page
    assert page.count(html.escape(XSS, quote=False)) >= 4        # message, tag, var, crumb
    # Secrets masked: headers, cookies, query, variables.
    for secret in ("sk-live-999", "s-777", "k-123456", "hunter2", "tok_live_000042",
                   "solarized-7"):
        assert secret not in text, secret
    assert "sessionid" in text and "theme" in text                # which cookies, not values
    # The short id people say leads to the page, and the page and the list show it.
    assert 'class="short-id"' in page and ">APP-1<" in page
    async with browser(app) as client:
        for said in ("APP-1", "app-1"):
            status, headers, _ = await client.get(f"/issues/{said}")
            assert (status, headers["Location"]) == (302, f"/issues/{issue['id']}")
        status, _, missing = await client.get("/issues/APP-2")
        listed = await page_of(client, "/issues")
    assert status == 404 and "No such issue" in missing
    assert ">APP-1<" in listed


async def test_resolved_in_next_release_reopens_only_on_a_newer_release(app: App) -> None:
    await message(app, "cache miss storm", release="shop@1.0")
    await message(app, "cache miss storm", release="shop@1.1")
    [issue] = await issue_rows(app)
    path = f"/issues/{issue['id']}"
    async with browser(app) as client:
        token = await client.csrf(path)
        status, headers, _ = await client.post(f"{path}/status", {
            "csrf_token": token, "action": "resolve_next_release"})
        assert (status, headers["Location"]) == (303, path)
        assert "Resolved in the release after shop@1.1" in html.unescape(
            await page_of(client, path))
        for old in ("shop@1.1", "shop@1.0"):              # the broken releases still run
            await message(app, "cache miss storm", release=old)
            assert [r["status"] for r in await issue_rows(app)] == ["resolved"], old
        await message(app, "cache miss storm", release="shop@1.2")
        assert [r["status"] for r in await issue_rows(app)] == ["unresolved"]
        page = await page_of(client, "/issues?q=is:regressed")
        assert issue_links(page) == [issue["id"]] and "badge regressed" in page


async def test_an_issue_ignored_for_n_more_events_comes_back_after_them(app: App) -> None:
    await message(app, "flaky test")
    [issue] = await issue_rows(app)
    path = f"/issues/{issue['id']}"
    async with browser(app) as client:
        token = await client.csrf(path)
        status, _, _ = await client.post(f"{path}/status", {
            "csrf_token": token, "action": "ignore", "events": "2"})
        assert status == 303
        assert "until it has 3 events" in await page_of(client, path)
        assert issue_links(await page_of(client, "/issues")) == []
        await message(app, "flaky test")
        assert [r["status"] for r in await issue_rows(app)] == ["ignored"]
        await message(app, "flaky test")
        assert [r["status"] for r in await issue_rows(app)] == ["unresolved"]


@pytest.mark.parametrize(("form", "says"), [
    ({"events": "many"}, "events: must be a whole number"),
    ({"events": "0"}, "events: must be a whole number"),
    ({"until": "2001-01-01"}, "until: the date must lie in the future"),
    ({"until": "next week"}, "is not a date"),
    ({"for": "forever"}, "for: must be one of"),
    ({"action": "delete"}, "action: must be one of")])
async def test_a_bad_status_form_says_what_is_wrong_and_changes_nothing(
        app: App, form: dict[str, str], says: str) -> None:
    await message(app, "flaky test")
    [issue] = await issue_rows(app)
    path = f"/issues/{issue['id']}"
    async with browser(app) as client:
        token = await client.csrf(path)
        status, _, page = await client.post(f"{path}/status", {
            "csrf_token": token, "action": "ignore", **form})
        assert status == 400
        assert says in html.unescape(page)
    assert [r["status"] for r in await issue_rows(app)] == ["unresolved"]


async def test_the_event_page_walks_between_events_and_downloads_json(app: App) -> None:
    for n in range(3):
        await message(app, "retry budget exhausted", dist=str(n))
    [issue] = await issue_rows(app)
    ids = [r["event_id"].hex for r in await app.database.db.pool.fetch(
        "SELECT event_id FROM events ORDER BY received_at, event_id")]
    base = f"/issues/{issue['id']}/events"
    async with browser(app) as client:
        status, headers, _ = await client.get(f"{base}/latest")
        assert (status, headers["Location"]) == (302, f"{base}/{ids[-1]}")
        status, headers, _ = await client.get(f"{base}/oldest")
        assert (status, headers["Location"]) == (302, f"{base}/{ids[0]}")
        middle = await page_of(client, f"{base}/{ids[1]}")
        links = set(re.findall(r'href="/issues/\d+/events/([0-9a-f]{32})" rel="(\w+)"',
                               middle))
        assert {(ids[2], "prev"), (ids[0], "next")} <= links
        status, headers, body = await client.get(f"{base}/{ids[1]}/json")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert headers["Content-Disposition"] == f'attachment; filename="event-{ids[1]}.json"'
        assert orjson.loads(body)["event_id"] == ids[1]
        for path in (f"{base}/{'0' * 32}", f"{base}/not-an-id", "/issues/999999",
                     "/issues/abc", f"/issues/999999/events/{ids[0]}"):
            status, _, page = await client.get(path)
            assert status == 404, path
            assert "No such" in page


async def test_projects_show_dsns_and_admins_create_projects_that_take_events_at_once(
        app: App) -> None:
    async with browser(app) as admin:
        page = html.unescape(await page_of(admin, "/projects"))
        assert f"{dsn(app)}" in page and "sentry_sdk.init(" in page
        assert "Sentry.init(" in page
        token = hidden_fields(page)["csrf_token"]
        status, _, refused = await admin.post("/projects", {"csrf_token": token,
                                                            "name": "Bad Name!"})
        assert status == 400 and re.search(r'class="problem"', refused)
        status, headers, _ = await admin.post("/projects", {"csrf_token": token,
                                                            "name": "billing"})
        assert status == 303
        page = html.unescape(await page_of(admin, "/projects"))
        project_id = int(headers["Location"].rsplit("-", 1)[1])
        new_dsn = re.search(rf'id="dsn-{project_id}-1">([^<]+)<', page)
        assert new_dsn, "the new project shows no DSN"
        await run_sdk(new_dsn[1], lambda: sentry_sdk.capture_message("first words"))
        await stored(app)
        assert [r["project"] for r in await issue_rows(app)] == ["billing"]
        status, _, _ = await admin.post(f"/projects/{project_id}/keys", {"csrf_token": token})
        assert status == 303
        page = await page_of(admin, "/projects")
        assert f'id="dsn-{project_id}-2"' in page
        status, _, refused = await admin.post("/projects/1/keys", {"csrf_token": token})
        assert status == 400 and "egen.toml" in html.unescape(refused)
