"""Undo Content-Encoding (and GELF's zlib and gzip datagrams), with the output capped
while it is produced.

Every ingest path (envelopes, the legacy store endpoint, GELF) accepts compressed bodies,
and a few hundred bytes of gzip, brotli or zstd can expand to gigabytes. The one-shot
library calls would allocate the whole expansion before any size check could run, so
every path goes through this single streaming decoder, which stops as soon as the output
passes the limit and never holds much more than the limit in memory.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable

import brotli
import zstandard

# RFC 9659: a zstd Content-Encoding never needs a window above 8 MiB; larger windows are
# only memory the client could make us allocate.
_ZSTD_MAX_WINDOW = 8 * 1024 * 1024
# A zstd block yields at most 128 KiB from 4 bytes of input, so a slice of n input bytes
# expands to at most about n * 32 KiB; slices are sized so one call stays near the limit.
_ZSTD_MAX_RATIO = 32 * 1024
_ZSTD_MIN_SLICE = 64
_ZLIB_SLICE = 64 * 1024
_ZERO_RUN = re.compile(rb"\0*")


class DecompressError(ValueError):
    """The body cannot be turned into the bytes the client meant to send."""


class TooLarge(DecompressError):
    """The body, once decoded, would exceed the limit (the HTTP layer answers 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"decompressed body exceeds {limit} bytes")
        self.limit = limit


class BadEncoding(DecompressError):
    """The encoding is unknown, or the data is not valid for it (the HTTP layer answers 400)."""


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Decode `body` per a Content-Encoding header value and return at most `limit` bytes.

    Stacked codings ("gzip, br") were applied left to right, so they are undone right to
    left. Names are case-insensitive; `identity`, empty and None mean no coding. Every
    stage is capped, and an uncompressed body over `limit` is refused like an expanded
    one, so the caller gets one rule: the result never exceeds `limit` or TooLarge is
    raised. Truncated streams and trailing garbage raise BadEncoding rather than
    yielding a silently shortened body.
    """
    codings = [name.strip().lower() for name in (encoding or "").split(",")]
    decoders = []
    for name in codings:
        if name and name != "identity":
            decoder = _DECODERS.get(name)
            if decoder is None:
                raise BadEncoding(f"unsupported Content-Encoding {name!r}")
            decoders.append(decoder)
    data = body
    for decoder in reversed(decoders):
        data = decoder(data, limit)
    if len(data) > limit:
        raise TooLarge(limit)
    return data


def _zlib_stream(name: str, data: bytes, wbits: int, limit: int, *, members: bool) -> bytes:
    """One zlib-family stream (or consecutive gzip members when `members`), capped.

    Input goes in slices so zlib never copies a large unconsumed tail, and positions are
    tracked instead of re-slicing the body, so many tiny members cost linear time.
    """
    view = memoryview(data)
    size = len(view)
    parts: list[bytes] = []
    total = 0
    pos = 0
    while True:
        decoder = zlib.decompressobj(wbits)
        try:
            while not decoder.eof and pos < size:
                # max_length bounds the output buffer itself, so a bomb stops at limit + 1;
                # output shorter than that means zlib consumed the whole slice.
                chunk = decoder.decompress(view[pos:pos + _ZLIB_SLICE], limit + 1 - total)
                pos += _ZLIB_SLICE
                total += len(chunk)
                if total > limit:
                    raise TooLarge(limit)
                parts.append(chunk)
        except zlib.error as exc:
            raise BadEncoding(f"{name}: invalid data: {exc}") from None
        if not decoder.eof:
            raise BadEncoding(f"{name}: truncated stream")
        pos = min(pos, size) - len(decoder.unused_data)
        if members:
            pos = _ZERO_RUN.match(data, pos).end()  # gzip(1) tolerates zero padding
        if pos >= size:
            return b"".join(parts)
        if not members or data[pos:pos + 2] != b"\x1f\x8b":
            raise BadEncoding(f"{name}: trailing data after the end of the stream")


def _gzip(data: bytes, limit: int) -> bytes:
    return _zlib_stream("gzip", data, 16 + zlib.MAX_WBITS, limit, members=True)


def _looks_like_zlib(data: bytes) -> bool:
    """RFC 1950 header: method 8 (deflate) and a check value making the pair divisible by 31."""
    return len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0


def _deflate(data: bytes, limit: int) -> bytes:
    """HTTP `deflate` means zlib-wrapped, but some clients send raw deflate; accept both."""
    if not _looks_like_zlib(data):
        return _zlib_stream("deflate", data, -zlib.MAX_WBITS, limit, members=False)
    try:
        return _zlib_stream("deflate", data, zlib.MAX_WBITS, limit, members=False)
    except BadEncoding as wrapped_error:
        # A raw stream can start with bytes that pass the zlib header check.
        try:
            return _zlib_stream("deflate", data, -zlib.MAX_WBITS, limit, members=False)
        except BadEncoding:
            raise wrapped_error from None


def _brotli(data: bytes, limit: int) -> bytes:
    decoder = brotli.Decompressor()
    parts: list[bytes] = []
    total = 0
    pending = data
    try:
        while True:
            # The buffer stops growing near the cap; the decoder keeps the unread input
            # and wants empty calls until it can accept more.
            chunk = decoder.process(pending, output_buffer_limit=limit + 1 - total)
            total += len(chunk)
            if total > limit:
                raise TooLarge(limit)
            parts.append(chunk)
            pending = b""
            if decoder.can_accept_more_data():
                break
    except brotli.error as exc:
        raise BadEncoding(f"br: invalid data: {exc}") from None
    if not decoder.is_finished():
        raise BadEncoding("br: truncated stream")
    return b"".join(parts)


def _zstd(data: bytes, limit: int) -> bytes:
    """Feed the frames in slices: the zstandard decompressobj has no output cap of its own."""
    context = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
    view = memoryview(data)
    size = len(view)
    step = max(_ZSTD_MIN_SLICE, limit // _ZSTD_MAX_RATIO)
    parts: list[bytes] = []
    total = 0
    pos = 0
    while True:
        decoder = context.decompressobj()
        try:
            while not decoder.eof and pos < size:
                chunk = decoder.decompress(view[pos:pos + step])
                pos += step
                total += len(chunk)
                if total > limit:
                    raise TooLarge(limit)
                parts.append(chunk)
        except zstandard.ZstdError as exc:
            raise BadEncoding(f"zstd: invalid data: {exc}") from None
        if not decoder.eof:
            raise BadEncoding("zstd: truncated stream")
        pos = min(pos, size) - len(decoder.unused_data)
        if pos >= size:
            return b"".join(parts)


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}
