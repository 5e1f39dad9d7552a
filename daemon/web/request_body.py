"""What every JSON endpoint (ingest, the send API, the operator API) does with a request
before it knows the format: read the body within a cap, undo Content-Encoding within a
cap, and answer errors as JSON that says what was wrong (Sentry's SDKs log the `detail`
of an error response)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from daemon.decompress import DecompressError, TooLarge, decompress


class HttpError(Exception):
    """An error answer: status, detail, and extra headers (Retry-After and the like)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def json_response(body: Any, *, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def error_response(err: HttpError, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"detail": err.detail}, status=err.status,
                         headers={**err.headers, **(headers or {})})


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, undecoded; 413 as soon as it is longer than `limit` (a declared
    Content-Length says so before anything is read)."""
    if request.content_length is not None and request.content_length > limit:
        raise HttpError(413, f"request body of {request.content_length} bytes exceeds the "
                             f"limit of {limit} bytes (ingest.max_body_size)")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body exceeds the limit of {limit} bytes "
                                 "(ingest.max_body_size)")
        chunks.append(chunk)
    return b"".join(chunks)


def decoded_body(request: web.Request, body: bytes, limit: int) -> bytes:
    """The body with its Content-Encoding undone (gzip, deflate, br, zstd)."""
    try:
        return decompress(body, request.headers.get("Content-Encoding"), limit)
    except TooLarge:
        raise HttpError(413, f"decompressed body exceeds the limit of {limit} bytes "
                             "(ingest.max_body_size)") from None
    except DecompressError as err:
        raise HttpError(400, f"cannot decode the body: {err}") from None
