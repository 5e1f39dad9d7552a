"""The event page (one stored event of an issue in full, with links to its newer, older,
newest and oldest siblings) and its JSON download, masked like the page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from daemon.events.storage import event_queries, queries
from daemon.web import render
from daemon.web.errors import error_page, redirect
from daemon.web.pages import event_view, masking


class EventPages:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self._pool = pool

    def routes(self) -> list[tuple[str, str, Any, bool]]:
        return [("GET", "/issues/{id}/events/{event}", self.event_page, False),
                ("GET", "/issues/{id}/events/{event}/json", self.event_json, False)]

    async def _find(self, request: web.Request
                    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(issue, event) named by the path; `latest` and `oldest` name those events."""
        text = request.match_info["id"]
        issue_id = int(text) if text.isdigit() and len(text) <= 19 else 0
        pool = self._pool()
        issue = await queries.get_issue(pool, issue_id, events=0) if issue_id else None
        if issue is None:
            return None, None
        wanted = request.match_info["event"]
        if wanted in ("latest", "oldest"):
            event = await event_queries.latest_event(pool, issue_id)
            if event is not None and wanted == "oldest":
                oldest = (await event_queries.neighbours(pool, event))["oldest"]
                if oldest is not None:
                    event = await event_queries.get_event(pool, issue_id, oldest)
            return issue, event
        return issue, await event_queries.get_event(pool, issue_id, wanted.lower())

    def _missing(self, request: web.Request, issue: dict[str, Any] | None) -> web.Response:
        if issue is None:
            return error_page(request, 404, "No such issue",
                              f"There is no issue {request.match_info['id']}.")
        return error_page(request, 404, "No such event", (
            f"Issue {issue['id']} has no stored event {request.match_info['event']}: it may "
            "have been dropped by retention (issues keep their latest "
            "ingest.max_events_per_issue events for ingest.retention_days)."))

    async def event_page(self, request: web.Request) -> web.StreamResponse:
        issue, event = await self._find(request)
        if issue is None or event is None:
            return self._missing(request, issue)
        if request.match_info["event"] in ("latest", "oldest"):
            return redirect(request, f"/issues/{issue['id']}/events/{event['event_id']}",
                            status=302)
        nav = await event_queries.neighbours(self._pool(), event)
        return render.page(request, "event.html", {
            "section": "issues", "issue": issue, "event": event, "nav": nav,
            "view": event_view.build(masking.mask(event["data"]))})

    async def event_json(self, request: web.Request) -> web.StreamResponse:
        issue, event = await self._find(request)
        if issue is None or event is None:
            return self._missing(request, issue)
        body = orjson.dumps(masking.mask(event["data"]), option=orjson.OPT_INDENT_2)
        return web.Response(body=body, content_type="application/json", headers={
            "Content-Disposition": f'attachment; filename="event-{event["event_id"]}.json"'})
