"""`POST /api/v1/events`: events from log shippers (Vector, Fluent Bit, Logstash) and from
applications without a Sentry SDK, in whatever JSON framing their `http` outputs use.

Shippers retry a whole batch on any error and drop it on some (Vector does not retry a
413; Fluent Bit treats only 200-205 as success), so one bad line must never cost the good
ones: the answer is 200 with counts and each record that was not stored (by its 0-based
position in the batch; a JSON line that is not an event is listed as invalid), and 400
only when nothing in the body is JSON. Lines below the project's `min_level` are counted
as filtered: shippers send every log line, egen keeps the warnings and errors.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from daemon.events.formats.shipper import ShipperBodyError, split_records, to_sentry_event
from daemon.events.formats.shipper_fields import ShipperRecordError
from daemon.events.listen.refusals import Refusals
from daemon.events.pipeline.ingest import Ingestor, Refused
from daemon.events.projects import Project, ProjectRegistry
from daemon.events.settings import IngestSettings
from daemon.web.request_body import (
    HttpError,
    decoded_body,
    error_response,
    json_response,
    read_body,
)

PATH = "/api/v1/events"
MAX_LISTED = 1000            # per-line problems listed in one answer


def project_for_key(request: web.Request, projects: ProjectRegistry, refusals: Refusals,
                    source: str) -> Project:
    """The project whose key the request carries (`Authorization: Bearer`, `X-Egen-Key`,
    or `?key=` for senders that cannot set headers)."""
    auth = request.headers.get("Authorization", "")
    key = auth[7:].strip() if auth[:7].lower() == "bearer " else \
        request.headers.get("X-Egen-Key", "").strip() or request.query.get("key", "")
    if not key:
        refusals.refused(source, "missing_key", project=None, key=None,
                         address=request.remote)
        raise HttpError(401, "missing project key: send Authorization: Bearer <key>, "
                             "X-Egen-Key or ?key=", {"WWW-Authenticate": "Bearer"})
    project = projects.for_key(key)
    if project is None or not any(hmac.compare_digest(key, k) for k in project.keys):
        refusals.refused(source, "unknown_key", project=None, key=key,
                         address=request.remote)
        raise HttpError(403, "the key is not valid for any project")
    return project


class KeyedEndpoint:
    """An endpoint for senders that authenticate with a project key and post batches:
    JSON answers (`status` on success), 429 over the rate limit, 503 with the journal
    full, each with Retry-After. Subclasses implement `_accept`."""

    path = PATH
    status = 200

    def __init__(self, ingestor: Ingestor, projects: ProjectRegistry,
                 settings: IngestSettings) -> None:
        self.ingestor = ingestor
        self.projects = projects
        self.settings = settings

    def mount(self, app: web.Application) -> None:
        app.router.add_post(self.path, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        try:
            return json_response(await self._accept(request), status=self.status)
        except HttpError as err:
            return error_response(err)
        except Refused as err:
            status = 503 if err.journal_full else 429
            return error_response(HttpError(status, err.reason),
                                  {"Retry-After": str(err.retry_after)})

    async def _accept(self, request: web.Request) -> dict[str, Any]:
        raise NotImplementedError


class NativeEndpoint(KeyedEndpoint):
    async def _accept(self, request: web.Request) -> dict[str, Any]:
        project = project_for_key(request, self.projects, self.ingestor.refusals, "native")
        limit = self.settings.max_body_size
        body = decoded_body(request, await read_body(request, limit), limit)
        try:
            records = split_records(body)
        except ShipperBodyError as err:
            raise HttpError(400, str(err)) from None
        problems: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        indexes: list[int] = []
        for record in records:
            if record.value is None:
                problems.append({"index": record.index, "outcome": "invalid",
                                 "error": record.error})
                continue
            try:
                events.append(to_sentry_event(record.value))
            except ShipperRecordError as err:
                problems.append({"index": record.index, "outcome": "invalid",
                                 "error": f"record {record.index}: {err}"})
                continue
            indexes.append(record.index)
        invalid_lines = len(problems)
        if invalid_lines:
            self.ingestor.metrics.outcome("native", "invalid").inc(invalid_lines)
        self.ingestor.admit(project, len(events), "native")
        results = await self.ingestor.accept(project, events, source="native",
                                             min_level=project.min_level)
        counts = {"accepted": 0, "filtered": 0, "invalid": invalid_lines}
        for index, result in zip(indexes, results, strict=True):
            counts[result.outcome] += 1
            if result.outcome == "invalid":
                problems.append({"index": index, "outcome": "invalid",
                                 "error": f"record {index}: {result.error}"})
        problems.sort(key=lambda p: p["index"])
        return {**counts, "problems": problems[:MAX_LISTED],
                "problems_not_listed": max(0, len(problems) - MAX_LISTED)}

