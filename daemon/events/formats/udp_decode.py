"""From one datagram to a Sentry-shaped event, whatever the sender spoke: the format is
detected per datagram as Graylog does (chunked GELF, gzip, zlib, JSON, syslog), because
one port commonly receives several (a Docker host sends GELF; a forwarder syslog).

A datagram ends as an event, as nothing yet (a GELF chunk waiting for the rest of its
message), or as a Rejected with a reason from a short fixed list, which the listener
counts per reason.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import orjson

from daemon.decompress import DecompressError
from daemon.events.formats import gelf, shipper, syslog
from daemon.events.formats.datagram import detect
from daemon.events.formats.shipper_fields import ShipperRecordError

REASONS = ("format", "parse", "chunk", "too_large")


class Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DatagramDecoder:
    def __init__(self, formats: list[str], *, max_message_size: int,
                 assembler: gelf.ChunkAssembler | None = None) -> None:
        self.formats = frozenset(formats)
        self.max_message_size = max_message_size
        self.assembler = assembler or gelf.ChunkAssembler(max_message_size=max_message_size)

    def decode(self, data: bytes, sender: Hashable, received: float) -> dict[str, Any] | None:
        kind = detect(data)
        try:
            if kind == "gelf_chunk" and "gelf" in self.formats:
                payload = self.assembler.add(sender, data)
                if payload is None:
                    return None
                return gelf.to_sentry_event(gelf.decode_payload(payload,
                                                                self.max_message_size))
            if kind in ("gzip", "zlib") and "gelf" in self.formats:
                return gelf.to_sentry_event(gelf.decode_payload(data, self.max_message_size))
            if kind == "json" and self.formats & {"gelf", "json"}:
                return self._json(data)
            if kind == "syslog" and "syslog" in self.formats:
                return syslog.to_sentry_event(syslog.parse(data, received=received))
        except gelf.GelfError as err:
            text = str(err)
            reason = ("too_large" if "exceeds" in text
                      else "chunk" if text.startswith("chunk") else "parse")
            raise Rejected(reason, text) from None
        except DecompressError as err:
            raise Rejected("too_large" if "exceeds" in str(err) else "parse", str(err)) \
                from None
        except (syslog.SyslogError, ShipperRecordError) as err:
            raise Rejected("parse", str(err)) from None
        raise Rejected("format", f"{kind} datagrams are not accepted here "
                                 f"(formats: {', '.join(sorted(self.formats))})")

    def _json(self, data: bytes) -> dict[str, Any]:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise Rejected("parse", f"invalid JSON: {err}") from None
        if not isinstance(value, dict):
            raise Rejected("parse", "JSON datagram is not an object")
        if "short_message" in value and "version" in value and "gelf" in self.formats:
            return gelf.to_sentry_event(value)
        if "json" not in self.formats:
            raise Rejected("format", "JSON datagrams that are not GELF are not accepted here")
        return shipper.to_sentry_event(value)
