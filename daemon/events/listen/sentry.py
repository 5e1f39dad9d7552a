"""Sentry's ingest endpoints, so applications keep the official SDKs and change only the
DSN: `POST /api/<project>/envelope/`, the legacy `POST /api/<project>/store/`, both also
under a path prefix (a DSN like `https://key@host/errors/1` behind a reverse proxy), and
the CORS preflight browser SDKs send first.

Speaks the SDKs' language for backpressure: 429 with Retry-After and
X-Sentry-Rate-Limits, and on every answer an X-Sentry-Rate-Limits that switches off the
item types egen does not store (transactions, sessions, profiles, replays…), so SDKs
stop sending them instead of spending bandwidth on both sides.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from daemon.events.formats.sentry_envelope import (
    EnvelopeError,
    decode_store_body,
    parse_envelope,
)
from daemon.events.pipeline.ingest import Ingestor, Refused
from daemon.events.pipeline.normalize import EVENT_ID
from daemon.events.projects import Project, ProjectRegistry
from daemon.events.settings import IngestSettings
from daemon.logs import fields, get_logger
from daemon.web.request_body import (
    HttpError,
    decoded_body,
    error_response,
    json_response,
    read_body,
)

log = get_logger("events.http")

# Data categories (Sentry's names) that egen accepts but does not store: SDKs told so
# drop them at the source. "error" and "default" (events) are never in the list.
NOT_STORED = ("transaction", "span", "session", "profile", "profile_chunk", "replay",
              "check_in", "monitor", "log_item", "feedback", "attachment", "statsd",
              "metric_bucket")
NOT_STORED_LIMIT = f"3600:{';'.join(NOT_STORED)}:organization"
# Path: optional prefix, then Sentry's own path; the trailing slash is optional.
ROUTE = r"/{prefix:(?:[^{}]*/)?}api/{project_id:\d{1,10}}/{endpoint:(?:envelope|store)/?}"
_AUTH_PAIR = re.compile(r"\s*([a-z_]+)\s*=\s*([^,\s]*)\s*,?", re.ASCII)
_CORS_EXPOSE = "x-sentry-error, x-sentry-rate-limits, retry-after"
_CORS_HEADERS = ("x-sentry-auth, content-type, content-encoding, authorization, "
                 "sentry-trace, baggage")


def parse_auth_header(value: str) -> dict[str, str]:
    """`Sentry sentry_key=abc, sentry_version=7, sentry_client=x/1.0` -> its pairs."""
    value = value.strip()
    if value[:6].lower() == "sentry":
        value = value[6:]
    return {m[1]: m[2] for m in _AUTH_PAIR.finditer(value)}


def _header_text(text: str) -> str:
    """An error detail fit for a header: control characters (from a client's own field
    names) would make the server refuse to send the answer at all."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", text[:200])


def _dsn_key(dsn: str | None) -> str | None:
    if not dsn:
        return None
    try:
        return urlsplit(dsn).username or None
    except ValueError:
        return None


class SentryEndpoints:
    def __init__(self, ingestor: Ingestor, projects: ProjectRegistry,
                 settings: IngestSettings) -> None:
        self.ingestor = ingestor
        self.projects = projects
        self.settings = settings

    def mount(self, app: web.Application) -> None:
        app.router.add_route("POST", ROUTE, self.handle)
        app.router.add_route("OPTIONS", ROUTE, self.preflight)

    # -- CORS ---------------------------------------------------------------------------

    def _cors(self, request: web.Request, project: Project | None) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if not origin or project is None or not project.allows_origin(origin):
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                "Access-Control-Expose-Headers": _CORS_EXPOSE}

    async def preflight(self, request: web.Request) -> web.Response:
        project = self.projects.get(int(request.match_info["project_id"]))
        headers = self._cors(request, project)
        if not headers:
            return error_response(HttpError(403, "origin not allowed for this project"))
        headers.update({"Access-Control-Allow-Methods": "POST, OPTIONS",
                        "Access-Control-Allow-Headers": _CORS_HEADERS,
                        "Access-Control-Max-Age": "3600"})
        return web.Response(status=200, headers=headers)

    # -- ingest -------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        project = self.projects.get(int(request.match_info["project_id"]))
        cors = self._cors(request, project)
        try:
            body = await self._accept(request, project)
        except HttpError as err:
            return error_response(err, {**cors, "X-Sentry-Error": _header_text(err.detail)})
        except Refused as err:
            scope = "organization" if err.journal_full else "project"
            return error_response(HttpError(429, err.reason), {
                **cors, "Retry-After": str(err.retry_after),
                "X-Sentry-Rate-Limits": f"{err.retry_after}::{scope}"})
        return json_response(body, headers={**cors, "X-Sentry-Rate-Limits": NOT_STORED_LIMIT})

    def _key(self, request: web.Request) -> str | None:
        header = request.headers.get("X-Sentry-Auth")
        if header is None and request.headers.get("Authorization", "")[:7].lower() == "sentry ":
            header = request.headers["Authorization"]
        if header is not None:
            return parse_auth_header(header).get("sentry_key")
        return request.query.get("sentry_key")

    def _authorize(self, request: web.Request, project: Project | None,
                   key: str | None) -> Project:
        number = request.match_info["project_id"]

        def refuse(reason: str) -> None:
            self.ingestor.refusals.refused("sentry", reason, project=number, key=key,
                                           address=request.remote)

        if not key:
            refuse("missing_key")
            raise HttpError(401, "missing authorization: send X-Sentry-Auth with "
                                 "sentry_key, or ?sentry_key=")
        if project is None:
            refuse("unknown_project")
            raise HttpError(403, f"there is no project {number}: check the number at the "
                                 "end of the DSN")
        if key not in project.keys:
            refuse("wrong_key")
            raise HttpError(403, f"the key is not valid for project {number}")
        origin = request.headers.get("Origin")
        if origin and not project.allows_origin(origin):
            refuse("origin")
            raise HttpError(403, f"origin {origin} is not allowed for project "
                                 f"{project.name!r}")
        return project

    async def _accept(self, request: web.Request, project: Project | None) -> dict[str, Any]:
        key = self._key(request)
        if key is not None:          # refuse strangers before reading their body
            project = self._authorize(request, project, key)
        limit = self.settings.max_body_size
        body = decoded_body(request, await read_body(request, limit), limit)
        if request.match_info["endpoint"].startswith("store"):
            if key is None:
                self._authorize(request, project, None)
            assert project is not None
            return await self._store(project, body, request.remote)
        try:
            envelope = parse_envelope(body)
        except EnvelopeError as err:
            raise HttpError(400, f"malformed envelope: {err}") from None
        if key is None:
            project = self._authorize(request, project, _dsn_key(envelope.dsn))
        assert project is not None
        return await self._envelope(project, envelope.items, envelope.event_id, request.remote)

    async def _store(self, project: Project, body: bytes,
                     client_ip: str | None) -> dict[str, Any]:
        try:
            event = decode_store_body(body, limit=self.settings.max_event_size)
        except EnvelopeError as err:
            raise HttpError(400, str(err)) from None
        except ValueError:     # TooLarge from its decompressor
            raise HttpError(413, f"event exceeds {self.settings.max_event_size} bytes "
                                 "(ingest.max_event_size)") from None
        return await self._ingest(project, [event], event.get("event_id"), None, client_ip)

    async def _envelope(self, project: Project, items: Any, event_id: str | None,
                        client_ip: str | None) -> dict[str, Any]:
        """Durable before the events are read: framing, sizes, the key and the rate
        limit are checked here; parsing and normalizing are the digest's (see
        daemon.events.pipeline.pending), which counts what it finds invalid."""
        payloads = []
        for i, item in enumerate(items, 1):
            self.ingestor.metrics.item(_category(item.type)).inc()
            if item.type != "event":
                continue
            if len(item.payload) > self.settings.max_event_size:
                raise HttpError(413, f"item {i}: event of {len(item.payload)} bytes exceeds "
                                     f"{self.settings.max_event_size} bytes "
                                     "(ingest.max_event_size)")
            payloads.append(bytes(item.payload))
        # As Relay answers: the envelope header's event id, which SDKs set to the event's;
        # the digest gives it to an event that has none, so answer and store agree.
        if isinstance(event_id, str) and EVENT_ID.fullmatch(event_id):
            event_id = event_id.replace("-", "").lower()
        else:
            event_id = None
        if payloads:
            self.ingestor.admit(project, len(payloads), "sentry")
            await self.ingestor.accept_pending(project, payloads, source="sentry",
                                               event_id=event_id, client_ip=client_ip)
        return {"id": event_id} if event_id else {}

    async def _ingest(self, project: Project, events: list[dict[str, Any]], event_id: Any,
                      raws: list[bytes] | None, client_ip: str | None) -> dict[str, Any]:
        self.ingestor.admit(project, len(events), "sentry")
        results = await self.ingestor.accept(project, events, source="sentry", raws=raws,
                                             client_ip=client_ip)
        accepted = [r for r in results if r.outcome == "accepted"]
        if not accepted:
            errors = "; ".join(r.error or r.outcome for r in results)
            log.info("event refused", extra=fields(project=project.name, error=errors))
            raise HttpError(400, f"invalid event: {errors}")
        return {"id": accepted[0].event_id}


_KNOWN_TYPES = frozenset({"event", "transaction", "session", "sessions", "client_report",
                          "attachment", "check_in", "log", "profile", "profile_chunk",
                          "replay_event", "replay_recording", "user_report", "feedback",
                          "span", "statsd", "metric_buckets", "otel_log"})


def _category(item_type: str) -> str:
    """Item types as metric labels: unknown ones are folded into one (bounded labels)."""
    return item_type if item_type in _KNOWN_TYPES else "other"
