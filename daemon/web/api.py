"""The operator API of the error tracker, for scripts and dashboards: list and inspect
issues, resolve, ignore or reopen them, and read project totals.

Every call needs `Authorization: Bearer <ingest.api_token>`; without a configured token
the API answers 403 to everything, so it is never open by accident. The token
`ingest.api_read_token`, for dashboards, may only read, and sees project keys masked: a
key lets anyone send events into a project, which reading issues does not need. Errors are JSON
`{"detail": ...}` naming what was wrong, and a database that is away answers 503 (the
caller may retry) rather than a 500.

Routes (all JSON):
  GET  /api/v1/issues                   {"issues": [...], "next": cursor or null};
                                        filters: project, status (or "all"), level,
                                        environment, release, q (the search language of
                                        the web page), sort, limit, offset, after
  GET  /api/v1/issues/{id}              the issue, its latest events (?events=N) and trace
  POST /api/v1/issues/{id}/resolve      the updated issue (also /ignore and /reopen);
                                        ?in=next_release, ignore ?until=ISO&events=N
  GET  /api/v1/projects                 {"projects": [...]}
  GET  /api/v1/projects/{project}/stats totals and events per hour (name or id)
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from daemon.db.pool import UNAVAILABLE
from daemon.events.storage import issue_list, issue_status, queries
from daemon.logs import fields, get_logger
from daemon.typedtoml import Secret
from daemon.web.request_body import HttpError, error_response, json_response

log = get_logger("events.api")

PREFIX = "/api/v1"
_INTEGER = re.compile(r"-?[0-9]{1,20}")
_STATUS_ACTIONS = {"resolve": "resolved", "ignore": "ignored", "reopen": "unresolved"}

Work = Callable[[web.Request], Awaitable[Any]]
_FULL_ACCESS = web.RequestKey("egen_api_full_access", bool)


def _int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not _INTEGER.fullmatch(text):
        raise HttpError(400, f"{name}: not an integer: {text!r}")
    return int(text)


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise HttpError(400, f"until: not an ISO 8601 time: {text!r}") from None


async def _issue_id(pool: asyncpg.Pool, request: web.Request) -> int:
    """The issue the path names by id or short id (SHOP-12); 404 for a short id that
    names none."""
    text = request.match_info["id"]
    if _INTEGER.fullmatch(text):
        return int(text)
    issue_id = await queries.issue_id_for(pool, text)
    if issue_id is None:
        raise HttpError(404 if "-" in text else 400,
                        f"no issue {text!r}" if "-" in text
                        else f"id: not an issue id or short id (SHOP-12): {text!r}")
    return issue_id


def _masked(key: str) -> str:
    return f"{key[:4]}…"


class OperatorApi:
    def __init__(self, pool: Callable[[], asyncpg.Pool], token: Secret | None,
                 read_token: Secret | None = None) -> None:
        self._pool = pool
        self._token = token.reveal().encode() if token is not None else None
        self._read_token = read_token.reveal().encode() if read_token is not None else None

    def mount(self, app: web.Application) -> None:
        router = app.router
        router.add_get(f"{PREFIX}/issues", self._handler(self._list_issues))
        router.add_get(f"{PREFIX}/issues/{{id}}", self._handler(self._get_issue))
        for action, status in _STATUS_ACTIONS.items():
            router.add_post(f"{PREFIX}/issues/{{id}}/{action}",
                            self._handler(self._status_setter(status)))
        router.add_get(f"{PREFIX}/projects", self._handler(self._list_projects))
        router.add_get(f"{PREFIX}/projects/{{project}}/stats",
                       self._handler(self._project_stats))

    def _authorize(self, request: web.Request) -> bool:
        """True for the full token, False for the read-only one; else HttpError."""
        if self._token is None:
            raise HttpError(403, "the operator API is off: set ingest.api_token")
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        challenge = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != "bearer" or not given.strip():
            raise HttpError(401, "missing bearer token: send 'Authorization: Bearer "
                                 "<ingest.api_token>'", challenge)
        # aiohttp decodes header bytes that are not UTF-8 as surrogates; undo that.
        sent = given.strip().encode("utf-8", "surrogateescape")
        if hmac.compare_digest(sent, self._token):
            return True
        if self._read_token is not None and hmac.compare_digest(sent, self._read_token):
            if request.method not in ("GET", "HEAD"):
                raise HttpError(403, "the read-only token (ingest.api_read_token) cannot "
                                     "change anything; use ingest.api_token")
            return False
        raise HttpError(401, "wrong bearer token", challenge)

    def _handler(self, work: Work) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            try:
                request[_FULL_ACCESS] = self._authorize(request)
                return json_response(await work(request))
            except HttpError as err:
                return error_response(err)
            except queries.QueryError as err:
                return json_response({"detail": str(err)}, status=400)
            except UNAVAILABLE as err:
                log.warning("operator API call failed: database unavailable", extra=fields(
                    path=request.path, error=f"{type(err).__name__}: {err}"))
                return json_response({"detail": "database unavailable"}, status=503)
            except Exception:
                log.exception("operator API call failed", extra=fields(path=request.path))
                return json_response({"detail": "internal error (see the egen log)"},
                                     status=500)

        return handle

    async def _list_issues(self, request: web.Request) -> dict[str, Any]:
        q = request.query
        status = q.get("status") or None
        sort = q.get("sort") or "last_seen"
        limit = _int(request, "limit", 100)
        issues = await issue_list.list_issues(
            self._pool(), project=q.get("project") or None,
            status=None if status == "all" else status, level=q.get("level") or None,
            environment=q.get("environment") or None, release=q.get("release") or None,
            query=q.get("q") or None, sort=sort, limit=limit,
            offset=_int(request, "offset", 0), after=q.get("after") or None)
        more = len(issues) == limit
        return {"issues": issues,
                "next": issue_list.encode_cursor(issues[-1], sort) if more else None}

    async def _get_issue(self, request: web.Request) -> dict[str, Any]:
        issue_id = await _issue_id(self._pool(), request)
        events = _int(request, "events", 10)
        issue = await queries.get_issue(self._pool(), issue_id, events=events)
        if issue is None:
            raise HttpError(404, f"no issue with id {issue_id}")
        return issue

    def _status_setter(self, status: str) -> Work:
        async def set_status(request: web.Request) -> dict[str, Any]:
            issue_id = await _issue_id(self._pool(), request)
            q = request.query
            in_release = q.get("in")
            if in_release not in (None, "", "next_release"):
                raise HttpError(400, f"in: must be next_release, not {in_release!r}")
            events = q.get("events")
            issue = await issue_status.set_status(
                self._pool(), issue_id, status, in_next_release=in_release == "next_release",
                ignore_until=_time(q.get("until")),
                ignore_events=_int(request, "events", 0) if events else None)
            if issue is None:
                raise HttpError(404, f"no issue with id {issue_id}")
            return issue

        return set_status

    async def _list_projects(self, request: web.Request) -> dict[str, Any]:
        projects = await queries.list_projects(self._pool())
        if not request[_FULL_ACCESS]:
            for project in projects:
                project["keys"] = [_masked(key) for key in project["keys"]]
        return {"projects": projects}

    async def _project_stats(self, request: web.Request) -> dict[str, Any]:
        project = request.match_info["project"]
        try:
            return await queries.project_stats(self._pool(), project)
        except queries.UnknownProject as err:
            raise HttpError(404, str(err)) from None
