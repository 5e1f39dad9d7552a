"""The mail pages: the log (search by recipient, sender, queue ID or Message-ID, subject
and time), one message with the timeline of every attempt, and the queue of mail still
waiting; admins retry and delete here as `egen queue retry|delete|flush` do, through the
same functions, so every change lands in the log with who made it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
from aiohttp import web

from daemon.mail.queue import admin as queue_admin
from daemon.mail.queue import search as mail_search
from daemon.mail.queue.store import PENDING, list_messages
from daemon.web import render
from daemon.web.errors import error_page, redirect

PAGE_SIZE = 50
QUEUE_SIZE = 200
SEARCH_FIELDS = ("to", "sender", "id", "subject", "since", "until")
_QUEUE_ID = re.compile(r"[0-9A-Z]{14}")
_CURSOR = re.compile(r"(?P<at>\d{4}-\d\d-\d\dT[\d:.]+\+00:00)_(?P<id>\d{1,19})")


class SearchProblem(ValueError):
    """A search field that cannot be read: the page says which and why."""


def _moment(text: str, offset: str, field: str) -> datetime | None:
    """A date or date and time the viewer typed, in their zone (`offset`: minutes from
    local time to UTC, which the page's script sends; without it, UTC)."""
    text = text.strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise SearchProblem(f"{field}: {text[:40]!r} is not a date or a date and time "
                            "(YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    if moment.tzinfo is not None:
        return moment.astimezone(UTC)
    minutes = int(offset) if offset.lstrip("-").isdigit() and len(offset) < 6 else 0
    return moment.replace(tzinfo=UTC) + timedelta(minutes=minutes)


def search_params(query: Any) -> dict[str, str]:
    return {name: str(query[name]) for name in (*SEARCH_FIELDS, "tz_offset")
            if query.get(name)}


def parse_search(query: Any) -> tuple[mail_search.MailSearch, dict[str, str]]:
    """The search from the log page's query string, and the parameters it came from (to
    build the next page's link). A date alone in `until` means the end of that day."""
    params = search_params(query)
    offset = params.get("tz_offset", "0")
    since = _moment(params.get("since", ""), offset, "since")
    until = _moment(params.get("until", ""), offset, "until")
    if until is not None and len(params["until"].strip()) == 10:
        until += timedelta(days=1)
    if since and until and since >= until:
        raise SearchProblem("until: must be later than since")
    return mail_search.MailSearch(
        to=params.get("to"), sender=params.get("sender"), ident=params.get("id"),
        subject=params.get("subject"), since=since, until=until), params


def _cursor(row: dict[str, Any]) -> str:
    return f"{row['at'].astimezone(UTC).isoformat()}_{row['log_id']}"


def _after(text: str | None) -> tuple[datetime, int] | None:
    found = _CURSOR.fullmatch(text or "")
    if found is None:
        return None
    return datetime.fromisoformat(found["at"]), int(found["id"])


def state_of(states: dict[str, int]) -> str:
    """One word for a message's recipients, worst news first: a message still waiting for
    one recipient is not yet 'delivered', one bounce among deliveries is 'bounced'."""
    for state in ("deleted", "deferred", "delivering", "queued", "bounced", "expired"):
        if states.get(state):
            return state
    return "delivered" if states.get("delivered") else "unknown"


def _queue_id(request: web.Request) -> str | None:
    text = request.match_info["id"].upper()
    return text if _QUEUE_ID.fullmatch(text) else None


def _by(request: web.Request) -> str:
    session = request[render.SESSION]
    return f"web user {session.user}"


class MailPages:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self._pool = pool

    def routes(self) -> list[tuple[str, str, Any, bool]]:
        return [("GET", "/mail", self.mail_log, False),
                ("GET", "/mail/{id}", self.message, False),
                ("POST", "/mail/{id}/retry", self.retry, True),
                ("POST", "/mail/{id}/delete", self.delete, True),
                ("GET", "/queue", self.queue, False),
                ("POST", "/queue/retry", self.retry_many, True)]

    async def mail_log(self, request: web.Request) -> web.StreamResponse:
        problem = None
        try:
            search, params = parse_search(request.query)
        except SearchProblem as err:
            search, params, problem = (mail_search.MailSearch(),
                                       search_params(request.query), str(err))
        rows: list[dict[str, Any]] = []
        if problem is None:
            rows = await mail_search.search(self._pool(), search, limit=PAGE_SIZE + 1,
                                            before=_after(request.query.get("after")))
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        for row in rows:
            row["state"] = state_of(row["states"])
        kept = {k: v for k, v in params.items() if k != "tz_offset"}
        if "tz_offset" in params and ("since" in kept or "until" in kept):
            kept["tz_offset"] = params["tz_offset"]
        next_url = "/mail?" + urlencode({**kept, "after": _cursor(rows[-1])}) if more \
            else None
        return render.page(request, "mail_log.html", {
            "section": "mail", "rows": rows, "params": params, "problem": problem,
            "next_url": next_url, "searched": bool(kept),
            "first_url": "/mail?" + urlencode(kept) if request.query.get("after") else None,
        }, status=400 if problem else 200)

    async def message(self, request: web.Request) -> web.StreamResponse:
        queue_id = _queue_id(request)
        pool = self._pool()
        found = await mail_search.message(pool, queue_id) if queue_id else None
        if found is None:
            return error_page(request, 404, "No such message",
                              f"The mail log has no message {request.match_info['id']!r}.")
        addresses = {r["idx"]: r["recipient"] for r in found["recipients"]}
        for event in found["events"]:
            event["recipient"] = addresses.get(event["recipient_idx"])
        pending = [r for r in found["recipients"] if r["status"] in PENDING]
        return render.page(request, "mail_message.html", {
            "section": "mail", "m": found, "pending": pending,
            "state": state_of({r["status"]: 1 for r in found["recipients"]}),
            "headers": found["headers"].decode("utf-8", "replace")
            if found["headers"] is not None else None,
            "notifications": await mail_search.notifications(pool, found["id"]),
            "state_of": state_of, "done": request.query.get("done")})

    async def retry(self, request: web.Request) -> web.StreamResponse:
        queue_id = _queue_id(request)
        result = await queue_admin.retry_message(self._pool(), queue_id, by=_by(request)) \
            if queue_id else None
        if result is None:
            return error_page(request, 404, "No such message",
                              f"The queue has no message {request.match_info['id']!r}.")
        return redirect(request, f"/mail/{queue_id}?done=retry-{result.rescheduled}")

    async def delete(self, request: web.Request) -> web.StreamResponse:
        queue_id = _queue_id(request)
        form = await request.post()
        try:
            result = await queue_admin.delete_message(
                self._pool(), queue_id, force=form.get("force") == "yes", by=_by(request)) \
                if queue_id else None
        except queue_admin.BeingDelivered as err:
            return error_page(request, 409, "The message is being delivered",
                              f"{err}. Try again in a moment, or delete it anyway: the "
                              "attempt in flight may still reach its recipient.")
        if result is None:
            return error_page(request, 404, "No such message",
                              f"The queue has no message {request.match_info['id']!r}.")
        return redirect(request, f"/mail/{queue_id}?done=deleted")

    async def queue(self, request: web.Request) -> web.StreamResponse:
        rows = await list_messages(self._pool(), statuses=PENDING, limit=QUEUE_SIZE + 1)
        now = datetime.now(UTC)
        for row in rows:
            row["state"] = state_of(row["statuses"])
            row["waited"] = now - row["received_at"]
        return render.page(request, "queue.html", {
            "section": "queue", "rows": rows[:QUEUE_SIZE], "more": len(rows) > QUEUE_SIZE,
            "done": request.query.get("done")})

    async def retry_many(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        pool = self._pool()
        if form.get("all") == "deferred":
            count = await queue_admin.retry_deferred(pool, by=_by(request))
            return redirect(request, f"/queue?done=retry-{count}")
        ids = [str(v).upper() for v in form.getall("message", [])
               if isinstance(v, str) and _QUEUE_ID.fullmatch(v.upper())]
        count = 0
        for queue_id in dict.fromkeys(ids):
            result = await queue_admin.retry_message(pool, queue_id, by=_by(request))
            count += result.rescheduled if result else 0
        return redirect(request, f"/queue?done=retry-{count}")
