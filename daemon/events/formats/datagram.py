"""What kind of log datagram just arrived, from its first bytes.

One UDP port is commonly shared by senders that were configured for Graylog: GELF
libraries send chunks, gzip, zlib or bare JSON, and a misdirected syslog daemon sends
`<PRI>` lines. The magic numbers are checked in Graylog's order, so a datagram Graylog
would accept is read the same way here, and anything else can be refused by name instead
of failing somewhere inside a decompressor or a JSON parser.
"""

from __future__ import annotations

import re

__all__ = ["KINDS", "detect"]

KINDS = ("gelf_chunk", "gzip", "zlib", "json", "syslog", "unknown")
_JSON_OBJECT = re.compile(rb"[ \t\r\n]*\{")


def detect(data: bytes) -> str:
    """One of KINDS: "gelf_chunk" (0x1e 0x0f), "gzip" (0x1f 0x8b), "zlib" (0x78 and a
    valid RFC 1950 header), "json" (the first byte that is not JSON whitespace is `{`),
    "syslog" (`<`), else "unknown"."""
    head = data[:2]
    if head == b"\x1e\x0f":
        return "gelf_chunk"
    if head == b"\x1f\x8b":
        return "gzip"
    if len(head) == 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return "zlib"  # 0x78 is deflate (CM 8) with a 32 KiB window, what every zlib writes
    if _JSON_OBJECT.match(data) is not None:
        return "json"
    if data[:1] == b"<":
        return "syslog"
    return "unknown"
