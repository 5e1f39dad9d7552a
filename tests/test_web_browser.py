"""The web pages in a real headless Chromium (Debian's package, driven by Playwright): a
developer signs in, the real sentry-sdk sends errors, the issue shows in the list, its
page shows in-app frames and breadcrumbs, resolving takes it off the unresolved list and
the next event brings it back as regressed. Hostile event content never runs as script,
and the pages work at a phone's width.

Chromium is required: `./scripts/test` installs it. Without it these tests fail rather
than skip, unless EGEN_SKIP_BROWSER=1 says so on purpose."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from playwright.async_api import Browser, Page, async_playwright

from daemon.app import App
from tests.eventfixtures import base_url, dsn, issue_rows, run_sdk, stored
from tests.test_web_pages import XSS, checkout
from tests.webfixtures import ADMIN, ADMIN_PASSWORD, web_app

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("EGEN_SKIP_BROWSER") == "1", reason="EGEN_SKIP_BROWSER=1")]

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def chromium_path() -> str:
    found = os.environ.get("EGEN_BROWSER") or shutil.which("chromium")
    if not found:
        pytest.fail("Debian's chromium is not installed: run ./scripts/test (it installs "
                    "it), `apt-get install chromium`, or set EGEN_BROWSER=/path/to/chromium")
    return found


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path(),
                                                   args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


class Dialogs:
    """Every alert/confirm/prompt a page opens: hostile content must never open one."""

    def __init__(self, page: Page) -> None:
        self.seen: list[str] = []
        page.on("dialog", self._on)

    async def _on(self, dialog: Any) -> None:
        self.seen.append(dialog.message)
        await dialog.dismiss()


async def sign_in(page: Page, app: App) -> None:
    await page.goto(base_url(app) + "/")
    assert page.url.startswith(base_url(app) + "/login")
    await page.fill("input[name=name]", ADMIN)
    await page.fill("input[name=password]", ADMIN_PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/issues")


async def open_issue_in_list(page: Page, title_part: str) -> None:
    link = page.locator("a.issue-link", has_text=title_part)
    await link.click()
    await page.wait_for_url("**/issues/*")


@pytest.fixture
async def app(pg_url: str, tmp_path: Path) -> AsyncIterator[App]:
    async with web_app(tmp_path, pg_url) as app:
        yield app


async def test_sign_in_see_the_issue_resolve_it_and_see_it_regress(
        app: App, chromium: Browser) -> None:
    page = await chromium.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    await sign_in(page, app)
    assert await page.locator("a.issue-link").count() == 0

    await run_sdk(dsn(app), checkout(), release="shop@1.0", environment="production")
    await stored(app)
    await page.reload()
    await open_issue_in_list(page, "card declined")
    [issue] = await issue_rows(app)
    assert page.url == f"{base_url(app)}/issues/{issue['id']}"

    # In-app frames are open with their variables; library frames hide behind a line.
    in_app = page.locator(".exception .frame.in-app")
    assert await in_app.count() >= 2
    assert await page.locator(".exception .frame.in-app", has_text="charge_card").first\
        .is_visible()
    assert await page.locator(".vars", has_text="amount").first.is_visible()
    rows = page.locator("table.crumbs-table tbody tr")
    assert await rows.count() == 2
    assert "SELECT * FROM carts" in await rows.nth(0).inner_text()

    await page.click("button[value=resolve]")
    await page.wait_for_url(f"**/issues/{issue['id']}")
    assert await page.locator("button[value=reopen]").is_visible()
    await page.goto(base_url(app) + "/issues")
    assert await page.locator("a.issue-link").count() == 0

    await run_sdk(dsn(app), checkout(), release="shop@1.0", environment="production")
    await stored(app)
    await page.reload()
    row = page.locator("tr.issue")
    assert await row.count() == 1
    assert await row.locator(".badge.regressed").is_visible()
    assert errors == []


async def test_hostile_event_content_is_shown_as_text(app: App, chromium: Browser) -> None:
    await run_sdk(dsn(app), checkout(), release="shop@1.0")
    await run_sdk(dsn(app), lambda: sentry_sdk.capture_message(XSS, level="error"))
    await stored(app)
    page = await chromium.new_page()
    dialogs = Dialogs(page)
    await sign_in(page, app)
    assert await page.locator("a.issue-link", has_text=XSS).count() == 2
    for issue in await issue_rows(app):
        await page.goto(f"{base_url(app)}/issues/{issue['id']}")
        body = await page.inner_text("body")
        assert XSS in body                              # shown, as text
        await page.goto(page.url + "/events/latest")
        assert XSS in await page.inner_text("body")
    assert await page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
    assert dialogs.seen == []


async def test_the_pages_fit_a_phone(app: App, chromium: Browser) -> None:
    await run_sdk(dsn(app), checkout(), release="shop@1.0")
    await stored(app)
    context = await chromium.new_context(viewport={"width": 390, "height": 844},
                                         device_scale_factor=2, is_mobile=True,
                                         has_touch=True)
    page = await context.new_page()
    await sign_in(page, app)
    [issue] = await issue_rows(app)
    for path in ("/issues", f"/issues/{issue['id']}", f"/issues/{issue['id']}/events/latest",
                 "/projects"):
        await page.goto(base_url(app) + path)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (path, width)
    await page.goto(base_url(app) + "/issues")
    link = page.locator("a.issue-link").first
    box = await link.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    await context.close()


async def test_times_show_in_the_viewers_zone_with_utc_on_hover(
        app: App, chromium: Browser) -> None:
    await run_sdk(dsn(app), lambda: sentry_sdk.capture_message("tz check", level="error"))
    await stored(app)
    context = await chromium.new_context(timezone_id="Asia/Tokyo")
    page = await context.new_page()
    await sign_in(page, app)
    [issue] = await issue_rows(app)
    await page.goto(f"{base_url(app)}/issues/{issue['id']}")
    stamp = page.locator("time[data-local]").first
    utc = await stamp.get_attribute("datetime")
    title = await stamp.get_attribute("title")
    assert utc and title and "UTC" in title
    hour_tokyo = (int(utc[11:13]) + 9) % 24
    assert f"{hour_tokyo:02d}:" in await stamp.inner_text()
    await context.close()
