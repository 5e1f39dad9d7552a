"""Parse Sentry envelopes and legacy store bodies into plain values, before any storage.

Envelopes are what every current Sentry SDK posts: a JSON header line, then items, each a
JSON header line and a payload that is either length-prefixed or runs to the next newline
(https://develop.sentry.dev/sdk/data-model/envelopes/). The framing is parsed here, apart
from the HTTP handler, so that it can be tested exhaustively and kept fast: it runs for
every event at thousands per second, so it only uses bytes.find and slicing. Malformed
input raises EnvelopeError naming what is wrong and where, because the message goes back
to the SDK author in the 400 response and is all they have to go on.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import orjson

from daemon.decompress import BadEncoding, TooLarge, decompress

# Relay's per-event size limit; the HTTP layer caps a single event payload at this.
MAX_EVENT_BYTES = 1024 * 1024

_LEADING_SPACE = re.compile(rb"[ \t\r\n]*")
_STORE_ERROR = "store body: not JSON, nor base64 of (zlib-compressed) JSON"


class EnvelopeError(ValueError):
    """The body is not a well-formed envelope or store payload (the HTTP layer answers 400)."""


@dataclass(frozen=True, slots=True)
class Item:
    """One envelope item. `headers` keeps every header, `type` and `length` included;
    types this daemon does not know are kept so the caller decides to skip them."""

    type: str
    headers: dict[str, Any]
    payload: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    headers: dict[str, Any]
    items: tuple[Item, ...]

    @property
    def event_id(self) -> str | None:
        value = self.headers.get("event_id")
        return value if isinstance(value, str) else None

    @property
    def dsn(self) -> str | None:
        value = self.headers.get("dsn")
        return value if isinstance(value, str) else None


def _load_object(data: bytes | memoryview, where: str, base: int) -> dict[str, Any]:
    """orjson-load `data`, requiring an object; error offsets are reported as `base` + the
    byte offset within `data`, so callers choose whether they count from the body start."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # orjson counts characters of the decoded text; the client needs bytes.
        offset = len(exc.doc[:exc.pos].encode("utf-8", "surrogatepass"))
        raise EnvelopeError(f"{where}: invalid JSON at byte {base + offset}: {exc.msg}") from None
    if not isinstance(value, dict):
        raise EnvelopeError(f"{where}: not a JSON object")
    return value


def parse_json_object(payload: bytes, where: str) -> dict[str, Any]:
    """Decode an item payload that must be a JSON object (event, transaction, session...).

    Errors read "<where>: ..." with byte offsets counted from the start of `payload`, so
    the caller names the item, e.g. where="item 2 (event)".
    """
    return _load_object(payload, where, 0)


def parse_envelope(body: bytes, *, max_items: int = 1000) -> Envelope:
    """Split an envelope body into its header and items, without interpreting payloads.

    Framing follows Relay: an item with `length` owns exactly that many bytes, then an
    optional newline; without `length` the payload runs to the next newline or the end
    of the body (the JS SDK sends JSON items that way, often with no final newline).
    Empty lines where an item header is expected are skipped, which covers the trailing
    newline(s) SDKs write. A CR is payload data, not part of the separator. Byte offsets
    in error messages count from the start of the body; items are numbered from 1.
    """
    view = memoryview(body)
    size = len(body)
    newline = body.find(b"\n")
    if newline < 0:
        newline = size
    headers = _load_object(view[:newline], "envelope header", 0)
    pos = newline + 1
    items: list[Item] = []
    while pos < size:
        newline = body.find(b"\n", pos)
        if newline < 0:
            newline = size
        if newline == pos:
            pos += 1
            continue
        if len(items) == max_items:
            raise EnvelopeError(f"more than {max_items} items")
        number = len(items) + 1
        where = f"item {number} header"
        item_headers = _load_object(view[pos:newline], where, pos)
        item_type = item_headers.get("type")
        if item_type is None:
            raise EnvelopeError(f"{where}: missing type")
        if not isinstance(item_type, str) or not item_type:
            raise EnvelopeError(f"{where}: type must be a non-empty string")
        start = newline + 1
        length = item_headers.get("length")
        if length is None:
            end = body.find(b"\n", start)
            if end < 0:
                end = size
            pos = end + 1
        else:
            if type(length) is not int or length < 0:
                raise EnvelopeError(f"{where}: length must be a non-negative integer")
            left = max(size - start, 0)
            if length > left:
                raise EnvelopeError(f"item {number}: length {length} exceeds the {left} bytes left")
            end = start + length
            pos = end + 1 if body[end:end + 1] == b"\n" else end
        items.append(Item(item_type, item_headers, body[start:end]))
    return Envelope(headers, tuple(items))


def decode_store_body(body: bytes, *, limit: int = MAX_EVENT_BYTES) -> dict[str, Any]:
    """Decode a legacy `POST /api/<project>/store/` body into the event object.

    Current SDKs post JSON; old raven clients posted base64 of zlib-compressed JSON and
    some base64 of plain JSON, so a body that does not open with `{` is tried as base64
    (padding optional), then inflated if it carries a zlib header. `limit` caps the JSON
    text however it was wrapped; exceeding it raises decompress.TooLarge, the error the
    HTTP layer already maps to 413. A body that opens with `{` gets the precise JSON
    error; anything else that fails gets one message covering all the accepted forms.
    """
    first = _LEADING_SPACE.match(body).end()
    if body[first:first + 1] == b"{":
        if len(body) > limit:
            raise TooLarge(limit)
        return _load_object(body, "store body", 0)
    text = body.strip()
    try:
        raw = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise EnvelopeError(_STORE_ERROR) from None
    if len(raw) >= 2 and raw[0] & 0x0F == 8 and ((raw[0] << 8) | raw[1]) % 31 == 0:
        try:  # an RFC 1950 header, as zlib.compress writes; JSON never starts like that
            raw = decompress(raw, "deflate", limit)
        except BadEncoding:
            raise EnvelopeError(_STORE_ERROR) from None
    elif len(raw) > limit:
        raise TooLarge(limit)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise EnvelopeError(_STORE_ERROR) from None
    if not isinstance(value, dict):
        raise EnvelopeError(_STORE_ERROR)
    return value
