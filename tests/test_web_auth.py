"""Signing in to the web pages against a real egen and Postgres: no page without a
session (every route the app mounts is tried), CSRF on every form, the cookie's flags,
the sign-in rate limit (429, bounded, lifts as the window passes, never forever), session
idle and absolute expiry, sign-out, and users synced from the config."""

from __future__ import annotations

import dataclasses
import re
from http.cookies import SimpleCookie
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import sentry_sdk

from daemon.app import App
from daemon.passwords import hash_password
from daemon.typedtoml import Secret
from daemon.web import accounts
from daemon.web.auth import SESSION_COOKIE
from daemon.web.settings import WebUserSettings
from tests.eventfixtures import base_url, dsn, issue_rows, run_sdk, stored
from tests.webfixtures import (
    ADMIN,
    ADMIN_PASSWORD,
    VIEWER,
    VIEWER_PASSWORD,
    browser,
    hidden_fields,
    web_app,
    web_config,
)

pytestmark = pytest.mark.slow

# Routes that keep their own rules: ingest, the bearer-token APIs, probes, sign-in, assets.
OWN_RULES = re.compile(r"^/(\{prefix\})?(api/|v3/mail/send$|gelf$|healthz$|readyz$|metrics$"
                       r"|login$|static(/|$))")


async def one_issue(app: App) -> int:
    await run_sdk(dsn(app), lambda: sentry_sdk.capture_message("disk full", level="error"))
    await stored(app)
    [row] = await issue_rows(app)
    return int(row["id"])


def page_routes(app: App) -> list[tuple[str, str]]:
    """(method, concrete path) of every route the web pages mount."""
    found = []
    for route in app.http.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path") or info.get("prefix") or ""
        if OWN_RULES.match(template) or route.method == "HEAD":
            continue
        path = template.replace("{id}", "1").replace("{event}", "latest")
        assert "{" not in path, f"no sample value for {template}"
        found.append((route.method, path))
    return found


def session_cookie(headers: aiohttp.typedefs.LooseHeaders) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    for value in headers.getall("Set-Cookie", []):  # type: ignore[union-attr]
        cookie.load(value)
    return cookie


async def test_no_page_answers_without_a_session(pg_url: str, tmp_path: Path) -> None:
    async with web_app(tmp_path, pg_url) as app:
        issue = await one_issue(app)
        routes = page_routes(app)
        methods = {method for method, _ in routes}
        assert {"GET", "POST"} <= methods and len(routes) >= 10, routes
        async with browser(app, signed_in=None) as anonymous:
            for method, path in routes:
                if method == "GET":
                    status, headers, body = await anonymous.get(path)
                else:
                    status, headers, body = await anonymous.post(
                        path, {"action": "resolve", "ids": str(issue), "name": "evil"})
                assert status in (302, 303), (method, path, status)
                assert headers["Location"].startswith("/login"), (method, path)
                assert "disk full" not in body
        assert [r["status"] for r in await issue_rows(app)] == ["unresolved"]
        async with aiohttp.ClientSession(base_url(app)) as plain:
            for path in ("/healthz", "/static/egen.css"):
                async with plain.get(path) as response:
                    assert response.status == 200, path
            async with plain.get("/api/v1/issues", headers={
                    "Authorization": "Bearer test-api-token"}) as response:
                assert response.status == 200
                assert [i["title"] for i in (await response.json())["issues"]] == ["disk full"]


async def test_sign_in_returns_to_the_page_asked_for(pg_url: str, tmp_path: Path) -> None:
    async with web_app(tmp_path, pg_url) as app:
        issue = await one_issue(app)
        async with browser(app, signed_in=None) as client:
            status, headers, _ = await client.get(f"/issues/{issue}?tab=tags")
            assert status == 302
            assert headers["Location"] == f"/login?next=/issues/{issue}%3Ftab%3Dtags"
            status, headers, _ = await client.sign_in(next_path=f"/issues/{issue}")
            assert (status, headers["Location"]) == (303, f"/issues/{issue}")
            status, _, page = await client.get(f"/issues/{issue}")
            assert status == 200 and "disk full" in page


async def test_the_session_cookie_is_httponly_lax_and_secure_when_asked(
        pg_url: str, tmp_path: Path) -> None:
    for secure in (False, True):
        path = tmp_path / str(secure)
        path.mkdir()
        async with web_app(path, pg_url, f"secure_cookies = {str(secure).lower()}") as app:
            # A Secure cookie is not sent back over plain HTTP: hand it over as a
            # browser talking to the TLS proxy in front of egen would.
            async with aiohttp.ClientSession(base_url(app)) as client:
                async with client.get("/login") as response:
                    form = hidden_fields(await response.text())
                    login = session_cookie(response.headers)["egen_login"]
                    assert bool(login["secure"]) is secure
                async with client.post("/login", allow_redirects=False, data={
                        **form, "name": ADMIN, "password": ADMIN_PASSWORD},
                        cookies={"egen_login": login.value}) as response:
                    assert response.status == 303
                    cookie = session_cookie(response.headers)[SESSION_COOKIE]
            assert cookie["httponly"] is True
            assert cookie["samesite"] == "Lax"
            assert cookie["path"] == "/"
            assert bool(cookie["secure"]) is secure
        await _reset(pg_url)


async def _reset(pg_url: str) -> None:
    """The next app in the same test starts from an empty web_sessions table."""
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("DELETE FROM web_sessions")
    finally:
        await conn.close()


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/",
                                    "/\\evil.example", "javascript:alert(1)"])
async def test_sign_in_never_sends_the_browser_to_another_site(
        pg_url: str, tmp_path: Path, target: str) -> None:
    async with web_app(tmp_path, pg_url) as app, browser(app, signed_in=None) as client:
        status, headers, _ = await client.sign_in(next_path=target)
        assert (status, headers["Location"]) == (303, "/")


async def test_wrong_passwords_and_unknown_names_sign_nobody_in(
        pg_url: str, tmp_path: Path) -> None:
    async with web_app(tmp_path, pg_url) as app, browser(app, signed_in=None) as client:
        for name, password in ((ADMIN, "wrong"), ("nobody", ADMIN_PASSWORD), (ADMIN, "")):
            status, _, page = await client.sign_in(name, password)
            assert status in (200, 400), (name, status)
            assert client.cookie(SESSION_COOKIE) is None
            assert ("Wrong user name or password" in page) or ("Enter your" in page)
        assert (await client.get("/issues"))[0] == 302


async def test_a_sign_in_form_from_elsewhere_is_refused(pg_url: str, tmp_path: Path) -> None:
    async with web_app(tmp_path, pg_url) as app, browser(app, signed_in=None) as client:
        status, _, page = await client.post("/login", {"name": ADMIN,
                                                       "password": ADMIN_PASSWORD})
        assert status == 403 and "expired" in page
        assert client.cookie(SESSION_COOKIE) is None


async def test_forms_without_the_csrf_token_change_nothing(pg_url: str, tmp_path: Path) -> None:
    async with web_app(tmp_path, pg_url) as app, browser(app) as client:
        issue = await one_issue(app)
        token = await client.csrf()
        for form in ({"action": "resolve"}, {"action": "resolve", "csrf_token": "x" * 43},
                     {"action": "resolve", "csrf_token": ""}):
            status, _, page = await client.post(f"/issues/{issue}/status", form)
            assert status == 403, form
            assert "not valid" in page
            status, _, _ = await client.post("/issues/bulk", {**form, "ids": str(issue)})
            assert status == 403
            status, _, _ = await client.post("/projects", {**form, "name": "sneaky"})
            assert status == 403
        assert [r["status"] for r in await issue_rows(app)] == ["unresolved"]
        assert await app.database.db.pool.fetchval(
            "SELECT count(*) FROM projects WHERE name = 'sneaky'") == 0
        status, headers, _ = await client.post(f"/issues/{issue}/status",
                                               {"action": "resolve", "csrf_token": token})
        assert (status, headers["Location"]) == (303, f"/issues/{issue}")
        assert [r["status"] for r in await issue_rows(app)] == ["resolved"]


async def test_only_admins_create_projects(pg_url: str, tmp_path: Path) -> None:
    async with web_app(tmp_path, pg_url) as app, browser(app, signed_in=VIEWER) as viewer:
        token = await viewer.csrf("/projects")
        status, _, page = await viewer.post("/projects", {"name": "billing",
                                                          "csrf_token": token})
        assert status == 403 and "Admins only" in page
        assert await app.database.db.pool.fetchval(
            "SELECT count(*) FROM projects WHERE name = 'billing'") == 0
        _, _, listing = await viewer.get("/projects")
        assert 'name="name"' not in listing           # no creation form for viewers


async def test_failed_sign_ins_are_limited_per_account_and_lift_with_the_window(
        pg_url: str, tmp_path: Path) -> None:
    web = 'login_window = "10m"\nlogin_failures_per_account = 3\nlogin_failures_per_address = 50'
    async with web_app(tmp_path, pg_url, web) as app, browser(app, signed_in=None) as client:
        for _ in range(3):
            status, _, _ = await client.sign_in(ADMIN, "guess")
            assert status == 200
        # Over the limit, even the right password is refused: guessing would go on.
        status, headers, page = await client.sign_in(ADMIN, ADMIN_PASSWORD)
        assert status == 429
        assert 0 < int(headers["Retry-After"]) <= 600
        assert "Too many failed sign-ins" in page
        assert client.cookie(SESSION_COOKIE) is None
        # Refused attempts are not counted, so the block cannot be stretched by trying.
        assert await app.database.db.pool.fetchval(
            "SELECT count(*) FROM web_login_failures") == 3
        # Another account from the same address is not affected.
        async with browser(app, signed_in=VIEWER) as other:
            assert (await other.get("/issues"))[0] == 200
        # Once the failures are older than the window, the right password works again.
        await app.database.db.pool.execute(
            "UPDATE web_login_failures SET at = at - interval '11 minutes'")
        assert (await client.sign_in(ADMIN, ADMIN_PASSWORD))[0] == 303


async def test_failed_sign_ins_are_limited_per_address(pg_url: str, tmp_path: Path) -> None:
    web = 'login_failures_per_account = 100\nlogin_failures_per_address = 4'
    async with web_app(tmp_path, pg_url, web) as app, browser(app, signed_in=None) as client:
        for name in ("a1", "a2", "a3", "a4"):
            assert (await client.sign_in(name, "guess"))[0] == 200
        status, headers, _ = await client.sign_in(VIEWER, VIEWER_PASSWORD)
        assert status == 429 and int(headers["Retry-After"]) <= 900


async def test_the_failure_log_keeps_only_one_window(pg_url: str, tmp_path: Path) -> None:
    async with web_app(tmp_path, pg_url) as app, browser(app, signed_in=None) as client:
        pool = app.database.db.pool
        await pool.execute(
            "INSERT INTO web_login_failures (at, username, address) SELECT "
            "now() - interval '1 hour', 'old' || g, '192.0.2.1' FROM generate_series(1, 500) g")
        assert (await client.sign_in("someone", "guess"))[0] == 200
        assert await pool.fetchval("SELECT count(*) FROM web_login_failures") == 1


async def test_sessions_end_when_idle_too_long_and_at_their_lifetime(
        pg_url: str, tmp_path: Path) -> None:
    web = 'session_idle = "1h"\nsession_lifetime = "1d"'
    async with web_app(tmp_path, pg_url, web) as app:
        pool = app.database.db.pool
        for column, age in (("last_seen_at", "61 minutes"), ("created_at", "25 hours")):
            async with browser(app) as client:
                assert (await client.get("/issues"))[0] == 200
                await pool.execute(f"UPDATE web_sessions SET {column} = now() - "
                                   f"interval '{age}'")
                status, headers, _ = await client.get("/issues")
                assert status == 302 and headers["Location"].startswith("/login"), column
            await pool.execute("DELETE FROM web_sessions")
        # A session in use stays: its idle clock restarts.
        async with browser(app) as client:
            await pool.execute("UPDATE web_sessions SET last_seen_at = now() - "
                               "interval '59 minutes'")
            assert (await client.get("/issues"))[0] == 200
            assert await pool.fetchval("SELECT now() - last_seen_at < interval '1 minute' "
                                       "FROM web_sessions")


async def test_signing_out_ends_the_session_for_every_copy_of_the_cookie(
        pg_url: str, tmp_path: Path) -> None:
    async with web_app(tmp_path, pg_url) as app, browser(app) as client:
        stolen = client.cookie(SESSION_COOKIE)
        assert stolen
        token = await client.csrf()
        status, headers, _ = await client.post("/logout", {"csrf_token": token})
        assert (status, headers["Location"]) == (303, "/login")
        async with (aiohttp.ClientSession(base_url(app)) as thief,
                    thief.get("/issues", allow_redirects=False,
                              cookies={SESSION_COOKIE: stolen}) as response):
            assert response.status == 302
        assert await app.database.db.pool.fetchval("SELECT count(*) FROM web_sessions") == 0


async def test_a_new_password_ends_the_users_sessions(pg_url: str, tmp_path: Path) -> None:
    async with web_app(tmp_path, pg_url) as app:
        pool = app.database.db.pool
        await accounts.add_user(pool, "dora", "first-password")
        async with browser(app, signed_in=None) as client:
            assert (await client.sign_in("dora", "first-password"))[0] == 303
            assert (await client.get("/issues"))[0] == 200
            assert await accounts.set_password(pool, "dora", "second-password") == 1
            assert (await client.get("/issues"))[0] == 302
            assert (await client.sign_in("dora", "first-password"))[0] == 200
            assert (await client.sign_in("dora", "second-password"))[0] == 303
            await accounts.remove_user(pool, "dora")
            assert (await client.get("/issues"))[0] == 302


async def test_config_users_follow_the_config_on_reload(pg_url: str, tmp_path: Path) -> None:
    async with web_app(tmp_path, pg_url) as app:
        pool = app.database.db.pool
        async with browser(app, signed_in=VIEWER) as viewer, browser(app) as admin:
            changed = web_config(tmp_path, pg_url).web
            users = dict(changed.users)
            del users[ADMIN]                                   # ada leaves the config
            users[VIEWER] = WebUserSettings(Secret(hash_password("new-vic", ln=4)))
            settings = dataclasses.replace(app.settings,
                                           web=dataclasses.replace(changed, users=users))
            await app.web.reload(settings.web)
            assert (await admin.get("/issues"))[0] == 302     # removed user: session gone
            assert (await viewer.get("/issues"))[0] == 302    # new password: session gone
            assert await pool.fetchval("SELECT array_agg(name) FROM web_users") == [VIEWER]
            assert (await viewer.sign_in(VIEWER, VIEWER_PASSWORD))[0] == 200
            assert (await viewer.sign_in(VIEWER, "new-vic"))[0] == 303


async def test_pages_carry_security_headers(pg_url: str, tmp_path: Path) -> None:
    async with web_app(tmp_path, pg_url) as app, browser(app) as client:
        for path in ("/login", "/issues", "/projects"):
            status, headers, _ = await client.get(path)
            assert status in (200, 302)
            csp = headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp or "default-src 'self'" in csp
            assert "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp.split("script-src")[-1].split(";")[0]
            assert headers["X-Frame-Options"] == "DENY"
            assert headers["Cache-Control"] == "no-store"
            assert headers["X-Content-Type-Options"] == "nosniff"
