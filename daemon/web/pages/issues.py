"""The issue list and the issue page, and the forms that change issues (bulk on the list,
one issue on its page). Reads through the same query functions as the operator API and
the CLI; parsing of the query string and the forms lives here, SQL does not.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
from aiohttp import web

from daemon.events.storage import issue_facets, issue_list, issue_status, queries
from daemon.events.storage import search as searching
from daemon.web import render
from daemon.web.errors import error_page, redirect
from daemon.web.pages import event_view, masking

PAGE_SIZE = 25
DEFAULT_QUERY = "is:unresolved"
SORT_LABELS = {"last_seen": "Last seen", "first_seen": "First seen", "count": "Events",
               "users": "Users"}
PERIODS = {"24h": ("hour", 24), "14d": ("day", 14), "30d": ("day", 30), "90d": ("day", 90)}
IGNORE_FOR = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7),
              "30d": timedelta(days=30)}
ACTIONS = {"resolve": "resolved", "resolve_next_release": "resolved", "ignore": "ignored",
           "reopen": "unresolved"}


def _issue_id(request: web.Request) -> int | None:
    text = request.match_info["id"]
    return int(text) if text.isdigit() and len(text) <= 19 else None


def list_url(params: dict[str, str], **changes: str | None) -> str:
    """The list page's URL with some parameters changed (None drops one)."""
    merged = {**params, **changes}
    kept = {k: v for k, v in merged.items() if v not in (None, "")}
    return "/issues" + (f"?{urlencode(kept)}" if kept else "")


class IssuePages:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self._pool = pool

    def routes(self) -> list[tuple[str, str, Any, bool]]:
        """(method, path, handler, admin only)."""
        return [("GET", "/", self.home, False),
                ("GET", "/issues", self.issue_list, False),
                ("POST", "/issues/bulk", self.bulk, False),
                ("GET", "/issues/{id}", self.issue_page, False),
                ("POST", "/issues/{id}/status", self.change_status, False)]

    async def home(self, request: web.Request) -> web.StreamResponse:
        return redirect(request, "/issues", status=302)

    async def issue_list(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        params = {name: q[name] for name in ("project", "q", "sort", "environment",
                                             "release", "level") if q.get(name)}
        if "q" not in q:
            params["q"] = DEFAULT_QUERY
        sort = params.get("sort", "last_seen")
        pool = self._pool()
        projects = await queries.project_names(pool)
        project = next((p for p in projects if params.get("project") in
                        (p["name"], str(p["id"]))), None)
        if params.get("project") and project is None:
            return error_page(request, 404, "No such project",
                              f"There is no project {params['project']!r}.")
        problem = None
        try:
            rows = await issue_list.list_issues(
                pool, project=project["id"] if project else None,
                level=params.get("level"), environment=params.get("environment"),
                release=params.get("release"), query=params["q"], sort=sort,
                limit=PAGE_SIZE + 1, after=q.get("after") or None)
        except queries.QueryError as err:
            rows, problem = [], str(err)
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        lines = await issue_facets.sparklines(pool, [r["id"] for r in rows])
        new_since = datetime.now(UTC) - timedelta(hours=24)
        for row in rows:
            row["sparkline"] = lines.get(row["id"], [])
            row["new"] = datetime.fromisoformat(row["first_seen"]) > new_since
        choices = await issue_facets.filter_choices(pool, project["id"] if project else None)
        next_url = list_url(params, after=issue_list.encode_cursor(rows[-1], sort)) \
            if more else None
        return render.page(request, "issues.html", {
            "section": "issues", "issues": rows, "params": params, "projects": projects,
            "project": project, "choices": choices, "sorts": SORT_LABELS,
            "levels": queries.LEVELS, "problem": problem, "next_url": next_url,
            "first_url": list_url(params) if q.get("after") else None,
            "list_url": lambda **c: list_url(params, **c),
            "here": list_url(params, after=q.get("after"))}, status=400 if problem else 200)

    async def bulk(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        action = str(form.get("action") or "")
        back = str(form.get("back") or "/issues")
        if not back.startswith("/issues"):
            back = "/issues"
        if action not in ("resolve", "ignore", "reopen"):
            return error_page(request, 400, "Unknown action",
                              f"action: must be resolve, ignore or reopen, not {action!r}")
        ids = [int(v) for v in form.getall("issue", []) if isinstance(v, str) and v.isdigit()
               and len(v) <= 19]
        if not ids:
            return redirect(request, back)
        await issue_status.set_statuses(self._pool(), ids, ACTIONS[action])
        return redirect(request, back)

    async def issue_page(self, request: web.Request) -> web.StreamResponse:
        issue_id = _issue_id(request)
        pool = self._pool()
        if issue_id is None and len(request.match_info["id"]) <= 90:
            # A short id (SHOP-12) someone typed or said: the page lives at its id.
            found = await queries.issue_id_for(pool, request.match_info["id"])
            if found is not None:
                return redirect(request, f"/issues/{found}", status=302)
        issue = await queries.get_issue(pool, issue_id, events=1) if issue_id else None
        if issue is None:
            return error_page(request, 404, "No such issue",
                              f"There is no issue {request.match_info['id']}.")
        period = request.query.get("period", "24h")
        if period not in PERIODS:
            period = "24h"
        unit, span = PERIODS[period]
        if unit == "hour":
            chart = await issue_facets.hourly(pool, issue["id"], hours=span)
        else:
            chart = await issue_facets.daily(pool, issue["id"], days=span)
        month = await issue_facets.daily(pool, issue["id"], days=30)
        tags = await issue_facets.tag_summary(pool, issue["id"])
        environments = [v["value"] for t in tags if t["key"] == "environment"
                        for v in t["values"]]
        latest = issue["events"][0] if issue["events"] else None
        view = event_view.build(masking.mask(latest["data"])) if latest else None
        return render.page(request, "issue.html", {
            "section": "issues", "issue": issue, "chart": chart, "unit": unit,
            "period": period, "periods": list(PERIODS), "month": month, "tags": tags,
            "environments": environments, "event": latest, "view": view,
            "ignore_for": list(IGNORE_FOR),
            "search_url": lambda key, value: list_url(
                {"q": searching.unparse(searching.Search(filters=(
                    searching.Filter(key, value),)))})})

    async def change_status(self, request: web.Request) -> web.StreamResponse:
        issue_id = _issue_id(request)
        form = await request.post()
        action = str(form.get("action") or "")
        if action not in ACTIONS:
            return error_page(request, 400, "Unknown action", f"action: must be one of "
                              f"{', '.join(ACTIONS)}, not {action!r}")
        until, count = None, None
        if action == "ignore":
            until, count, problem = _ignore_options(form)
            if problem:
                return error_page(request, 400, "Cannot ignore the issue like that", problem)
        issue = await issue_status.set_status(
            self._pool(), issue_id or 0, ACTIONS[action],
            in_next_release=action == "resolve_next_release", ignore_until=until,
            ignore_events=count)
        if issue is None:
            return error_page(request, 404, "No such issue",
                              f"There is no issue {request.match_info['id']}.")
        return redirect(request, f"/issues/{issue['id']}")


def _ignore_options(form: Any) -> tuple[datetime | None, int | None, str | None]:
    """(until, events, problem) from the ignore form: a preset duration or a date (the
    page's script sends the viewer's offset from UTC in minutes), and/or a count."""
    until = None
    preset = str(form.get("for") or "")
    date = str(form.get("until") or "").strip()
    if preset in IGNORE_FOR:
        until = datetime.now(UTC) + IGNORE_FOR[preset]
    elif date:
        try:
            day = datetime.fromisoformat(date)
        except ValueError:
            return None, None, f"until: {date!r} is not a date (YYYY-MM-DD)"
        offset = str(form.get("tz_offset") or "0")
        minutes = int(offset) if offset.lstrip("-").isdigit() and len(offset) < 6 else 0
        until = day.replace(tzinfo=UTC) + timedelta(minutes=minutes)
        if until <= datetime.now(UTC):
            return None, None, "until: the date must lie in the future"
    elif preset:
        return None, None, f"for: must be one of {', '.join(IGNORE_FOR)}"
    count = None
    events = str(form.get("events") or "").strip()
    if events:
        if not events.isdigit() or not 1 <= int(events) <= issue_status.MAX_IGNORE_EVENTS:
            return None, None, (f"events: must be a whole number from 1 to "
                                f"{issue_status.MAX_IGNORE_EVENTS}")
        count = int(events)
    return until, count, None
