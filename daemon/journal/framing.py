"""The framing of a journal record that carries a JSON header and raw bytes: magic, the
header's length (u32, big-endian), the header JSON, then the payload as it is. The payload
(an event's JSON, a message) goes in without a copy through a JSON encoder."""

from __future__ import annotations

import struct
from typing import Any

import orjson

_LENGTH = struct.Struct(">I")


class FramingError(ValueError):
    """A record that is not framed as `split_framed` expects."""


def frame(magic: bytes, header: dict[str, Any], payload: bytes) -> bytes:
    head = orjson.dumps(header)
    return b"".join((magic, _LENGTH.pack(len(head)), head, payload))


def split_framed(data: bytes, magic: bytes, what: str,
                 error: type[ValueError] = FramingError) -> tuple[dict[str, Any], bytes]:
    """(JSON header, payload) of a record framed as magic, header length, header; `error`
    (a ValueError) is raised, naming the problem, for a record framed otherwise."""
    start = len(magic) + _LENGTH.size
    if not data.startswith(magic) or len(data) < start:
        raise error(f"not {what} (bad magic)")
    (length,) = _LENGTH.unpack_from(data, len(magic))
    if start + length > len(data):
        raise error(f"header length {length} exceeds the record and runs past its end")
    try:
        header = orjson.loads(data[start:start + length])
    except orjson.JSONDecodeError as err:
        raise error(f"header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise error("header is not a JSON object")
    return header, data[start + length:]
