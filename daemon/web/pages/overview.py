"""The overview (the last 24 hours of mail and errors on one page, with small charts) and
the alerts page (each alert mail and webhook with its state and attempts, what
`egen alerts log` shows)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from daemon.alerts import store as alert_store
from daemon.events.storage import issue_facets
from daemon.mail.queue import search as mail_search
from daemon.web import render

ALERT_DAYS = {"1d": 1, "7d": 7, "30d": 30}
ALERT_ROWS = 200


def _sum(buckets: list[dict[str, Any]]) -> int:
    return sum(int(b["count"]) for b in buckets)


class OverviewPages:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self._pool = pool

    def routes(self) -> list[tuple[str, str, Any, bool]]:
        return [("GET", "/overview", self.overview, False),
                ("GET", "/alerts", self.alerts, False)]

    async def overview(self, request: web.Request) -> web.StreamResponse:
        pool = self._pool()
        mail = await mail_search.totals(pool, hours=24)
        errors = await issue_facets.activity(pool, hours=24)
        return render.page(request, "overview.html", {
            "section": "overview", "mail": mail, "errors": errors,
            "mail_totals": {name: _sum(series) for name, series in mail.items()},
            "error_totals": {name: _sum(series) for name, series in errors.items()}})

    async def alerts(self, request: web.Request) -> web.StreamResponse:
        period = request.query.get("period", "7d")
        if period not in ALERT_DAYS:
            period = "7d"
        channel = request.query.get("channel") or None
        rows = await alert_store.send_log(
            self._pool(), since=time.time() - ALERT_DAYS[period] * 86400, channel=channel,
            limit=ALERT_ROWS)
        for row in rows:
            row["tries"] = orjson.loads(row["tries"])
        return render.page(request, "alerts.html", {
            "section": "alerts", "rows": rows, "period": period, "periods": list(ALERT_DAYS),
            "channel": channel})
