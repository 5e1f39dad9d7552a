"""`POST /gelf`, Graylog's GELF HTTP input, for Vector's `gelf` codec, graypy's and
pygelf's HTTP handlers and Logstash's gelf output: one message per request, or a batch
of messages separated by newlines or NUL bytes, answered `202 Accepted` as Graylog does.

The body's compression is found by its magic bytes, not its Content-Encoding: graypy
labels a zlib body "gzip,deflate". GELF carries no key, so the project comes from the
request's key as on the native endpoint.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from daemon.decompress import DecompressError, TooLarge, decompress
from daemon.events.formats import gelf
from daemon.events.formats.datagram import detect
from daemon.events.listen.native import KeyedEndpoint, project_for_key
from daemon.web.request_body import HttpError, read_body

PATH = "/gelf"
MAX_MESSAGES = 100_000


class GelfHttpEndpoint(KeyedEndpoint):
    path = PATH
    status = 202              # Graylog's answer

    async def _accept(self, request: web.Request) -> dict[str, Any]:
        project = project_for_key(request, self.projects, self.ingestor.refusals,
                                  "gelf_http")
        limit = self.settings.max_body_size
        body = self._decompressed(request, await read_body(request, limit), limit)
        parts = [p for p in body.replace(b"\0", b"\n").split(b"\n") if p.strip()]
        if len(parts) > MAX_MESSAGES:
            raise HttpError(413, f"more than {MAX_MESSAGES} messages in one request")
        events, problems = [], []
        for index, part in enumerate(parts):
            try:
                events.append(gelf.to_sentry_event(
                    gelf.decode_payload(part, self.settings.max_event_size)))
            except gelf.GelfError as err:
                if len(parts) == 1 and "exceeds" in str(err):
                    raise HttpError(413, str(err)) from None
                problems.append({"index": index, "error": str(err)})
        if not events:
            raise HttpError(400, f"no usable GELF message: {problems[0]['error']}"
                            if problems else "empty body")
        self.ingestor.admit(project, len(events), "gelf_http")
        results = await self.ingestor.accept(project, events, source="gelf_http",
                                             min_level=project.min_level)
        counts = {"accepted": 0, "filtered": 0, "invalid": len(problems)}
        for result in results:
            counts[result.outcome] += 1
        return {**counts, "problems": problems[:1000]}

    @staticmethod
    def _decompressed(request: web.Request, body: bytes, limit: int) -> bytes:
        """Compression by magic bytes first (a whole batch may be gzip'd); else br or zstd
        as Content-Encoding says (other labels are not trusted: see the docstring)."""
        kind = detect(body)
        encoding = {"gzip": "gzip", "zlib": "deflate"}.get(kind)
        if encoding is None:
            declared = request.headers.get("Content-Encoding", "").strip().lower()
            encoding = declared if declared in ("br", "zstd") else None
        if encoding is None:
            return body
        try:
            return decompress(body, encoding, limit)
        except TooLarge:
            raise HttpError(413, f"decompressed body exceeds {limit} bytes "
                                 "(ingest.max_body_size)") from None
        except DecompressError as err:
            raise HttpError(400, f"cannot decode the body: {err}") from None
