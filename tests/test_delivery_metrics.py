"""Delivery metrics as Prometheus scrapes them from a running App's /metrics: results by
kind, the latency histogram, the queue gauges, and open connections per destination."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
from prometheus_client.parser import text_string_to_metric_families

from daemon.app import App
from tests.mailfixtures import mail_config, port, started_app
from tests.smtpsink import Sink

MESSAGE = (b"From: App <app@example.com>\r\nTo: ops@example.org\r\nSubject: metrics\r\n\r\n"
           b"Counted.\r\n")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(app: App) -> Samples:
    address = app.http.addresses[0]
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://{address.host}:{address.port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def send(app: App, recipients: list[str]) -> str:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
        _, reply = await client.sendmail("app@example.com", recipients, MESSAGE)
    return reply.rsplit(" ", 1)[1]


async def settle(app: App, queue_id: str, want: dict[str, str]) -> None:
    """Wait until delivery recorded `want`, then for one more idle pass of the worker (the
    one that refreshes the gauges after the results were recorded)."""
    async def reached() -> None:
        while True:
            rows = await app.database.db.pool.fetch(
                "SELECT recipient, status FROM mail_recipients WHERE message_id = $1",
                queue_id)
            app.delivery.idle.clear()
            if {r["recipient"]: r["status"] for r in rows} == want:
                break
            await app.delivery.idle.wait()
        await app.delivery.idle.wait()

    await asyncio.wait_for(reached(), 20)


async def test_results_latency_and_queue_gauges_move(tmp_path: Path, pg_url: str) -> None:
    # Mail for broken.test goes to a "Maildir" that is a plain file: it cannot be
    # created, so that recipient is deferred (and stays in the queue).
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    routes = (f'[[routes]]\ndomains = ["broken.test"]\ntransport = "maildir"\n'
              f'path = "{blocker}"\n'
              f'[[routes]]\ndomains = ["*"]\ntransport = "maildir"\n'
              f'path = "{tmp_path / "maildir"}"\n')
    settings = mail_config(tmp_path, pg_url, routes=routes,
                           delivery='poll_interval = "100ms"\n')
    async with started_app(settings) as app:
        app.delivery.gauge_interval = 0       # refresh on every pass, not every 5 s
        before = await scrape(app)
        assert value(before, "egen_delivery_results_total", result="delivered") is None
        assert value(before, "egen_delivery_latency_seconds_count") == 0

        queue_id = await send(app, ["ops@example.org", "x@broken.test"])
        await settle(app, queue_id, {"ops@example.org": "delivered",
                                     "x@broken.test": "deferred"})
        after = await scrape(app)

    assert value(after, "egen_delivery_results_total", result="delivered") == 1
    assert value(after, "egen_delivery_results_total", result="deferred") == 1
    assert value(after, "egen_delivery_latency_seconds_count") == 1
    assert value(after, "egen_delivery_latency_seconds_bucket", le="+Inf") == 1
    assert value(after, "egen_delivery_queue_recipients", status="deferred") == 1
    assert value(after, "egen_delivery_queue_recipients", status="queued") == 0
    assert value(after, "egen_delivery_queue_recipients", status="delivering") == 0
    assert value(after, "egen_delivery_in_flight_recipients") == 0


async def test_open_connections_per_destination(tmp_path: Path, pg_url: str) -> None:
    sink = Sink("127.0.0.1")
    await sink.start()
    routes = (f'[[routes]]\ndomains = ["*"]\ntransport = "smarthost"\nhost = "127.0.0.1"\n'
              f'port = {sink.port}\ntls = "none"\n')
    try:
        async with started_app(mail_config(tmp_path, pg_url, routes=routes)) as app:
            assert value(await scrape(app), "egen_delivery_connections",
                         destination="127.0.0.1") is None
            await send(app, ["customer@example.net"])
            await sink.handler.wait_for(1)
            await send(app, ["other@example.net"])
            await sink.handler.wait_for(2)
            # The connection stays open for reuse: one, used for both messages.
            samples = await scrape(app)
            assert value(samples, "egen_delivery_connections", destination="127.0.0.1") == 1
            assert sink.handler.connections == 1
    finally:
        await sink.stop()
    # Closed at stop, and the label goes with it (no series for hosts without connections).
    assert app.registry.get_sample_value("egen_delivery_connections",
                                         {"destination": "127.0.0.1"}) is None


async def test_a_connection_dropped_while_idle_costs_a_reconnect_not_a_deferral(
        tmp_path: Path, pg_url: str) -> None:
    sink = Sink("127.0.0.1")
    refuse = [False]

    async def handle_MAIL(server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if refuse[0]:         # what a server that timed out an idle connection answers
            refuse[0] = False
            return "421 4.4.2 sink: idle too long, closing connection"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    sink.handler.handle_MAIL = handle_MAIL  # type: ignore[attr-defined]
    await sink.start()
    routes = (f'[[routes]]\ndomains = ["*"]\ntransport = "smarthost"\nhost = "127.0.0.1"\n'
              f'port = {sink.port}\ntls = "none"\n')
    try:
        async with started_app(mail_config(tmp_path, pg_url, routes=routes)) as app:
            first = await send(app, ["customer@example.net"])
            await settle(app, first, {"customer@example.net": "delivered"})
            refuse[0] = True
            second = await send(app, ["other@example.net"])
            await settle(app, second, {"other@example.net": "delivered"})
            samples = await scrape(app)
    finally:
        await sink.stop()
    assert [m.recipients for m in sink.handler.messages] == [["customer@example.net"],
                                                             ["other@example.net"]]
    assert sink.handler.connections == 2
    assert value(samples, "egen_delivery_results_total", result="delivered") == 2
    assert value(samples, "egen_delivery_results_total", result="deferred") is None
    assert value(samples, "egen_delivery_connections", destination="127.0.0.1") == 1
