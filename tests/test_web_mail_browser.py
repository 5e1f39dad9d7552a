"""The mail pages in a real headless Chromium: an admin searches the mail log for a
recipient, opens the message whose first attempt the smarthost refused with a 4xx, sees
that attempt on the timeline, retries it now, and sees the delivery that followed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser

from daemon.app import App
from tests.eventfixtures import base_url
from tests.mail_webfixtures import mail_web_app, message
from tests.smtpsink import Sink
from tests.test_delivery import send, wait_status
from tests.test_web_browser import Dialogs, chromium, sign_in

__all__ = ["chromium"]          # the fixture, used by name

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("EGEN_SKIP_BROWSER") == "1", reason="EGEN_SKIP_BROWSER=1")]


@pytest.fixture
async def world(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[App, Sink]]:
    async with mail_web_app(tmp_path, pg_url) as pair:
        yield pair


async def test_search_the_log_read_the_timeline_and_retry(world: tuple[App, Sink],
                                                          chromium: Browser) -> None:
    app, sink = world
    sink.handler.rules["later@example.org"] = "4xx"
    held = await send(app, ["later@example.org"], message("Quarterly numbers <b>draft</b>",
                                                          "later@example.org"))
    other = await send(app, ["ops@example.org"], message("Deploy done"))
    await wait_status(app, held, {"later@example.org": "deferred"})
    await wait_status(app, other, {"ops@example.org": "delivered"})

    page = await chromium.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    dialogs = Dialogs(page)
    await sign_in(page, app)
    await page.click("nav >> text=Mail")
    await page.wait_for_url("**/mail")
    assert await page.locator("tr.mail-row").count() == 2

    await page.fill("input[name=to]", "LATER@example")
    await page.click("form[role=search] button[type=submit]")
    await page.wait_for_url("**/mail?*to=LATER*")
    rows = page.locator("tr.mail-row")
    assert await rows.count() == 1
    assert await rows.first.get_attribute("data-queue-id") == held
    assert "deferred" in await rows.first.locator(".badge").inner_text()

    await rows.first.locator("a.mail-link").click()
    await page.wait_for_url(f"**/mail/{held}")
    assert await page.locator("h1").inner_text() == "Quarterly numbers <b>draft</b>"
    attempt = page.locator("table.timeline tr.event-deferred")
    assert await attempt.count() == 1
    text = await attempt.inner_text()
    assert "451" in text and f"127.0.0.1]:{sink.port}" in text

    sink.handler.rules.clear()
    await page.click("button[value=retry]")
    await page.wait_for_url(f"**/mail/{held}?done=retry-1")
    await wait_status(app, held, {"later@example.org": "delivered"})
    await page.reload()
    timeline = page.locator("table.timeline tbody tr")
    classes = [await timeline.nth(i).get_attribute("class")
               for i in range(await timeline.count())]
    assert classes == ["event-accepted", "event-deferred", "event-retry", "event-delivered"]
    delivered = await page.locator("table.timeline tr.event-delivered").inner_text()
    assert "250" in delivered
    assert await page.locator("#message-state").inner_text() == "delivered"
    assert sorted(m.recipients[0] for m in sink.handler.messages) == [
        "later@example.org", "ops@example.org"]

    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(base_url(app) + "/mail")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    assert errors == [] and dialogs.seen == []
