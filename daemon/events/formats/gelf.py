"""GELF (Graylog Extended Log Format) messages, as Sentry events.

Applications already set up to log to Graylog (graypy, pygelf, logback-gelf, Docker's gelf
log driver) can point at egen instead and have their errors grouped like an SDK's. This
module is the synchronous, socket-free core: listeners hand it datagrams or frames and the
sender's address. Every byte is untrusted, so chunks are reassembled per sender within
fixed memory, payloads are decompressed under a cap, and anything malformed fails with a
GelfError whose message names the problem.

Mapping (GELF 1.1; "1.0", which graypy sends, is accepted too):

| Sentry field | GELF field |
|---|---|
| `message`, `logentry.formatted` | `short_message` (blank: `message`, then `full_message`) |
| `exception`, `platform` | a Python, Java or Node.js trace in `full_message` |
| `level` | `level`, syslog 0-7 (absent: 1, alert, per the spec) |
| `timestamp` | `timestamp`, epoch seconds (unusable: arrival time) |
| `server_name` | `host` |
| `logger` | `_logger` (graypy), `_logger_name` (pygelf) |
| `environment`, `release` | `_environment` or `_env`, `_release` or `_version` |
| `tags` | `facility`; Docker's `_container_name`, `_container_id`, `_image_name`, |
| | `_command`, `_tag` |
| `extra` | every other non-null field, leading `_` dropped (`_id` is reserved and |
| | ignored): at most 100, each cut to 16 KiB of JSON |
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import orjson

from daemon.decompress import DecompressError, TooLarge, decompress
from daemon.events.formats.datagram import detect
from daemon.events.formats.shipper import MAX_EXTRA_KEYS, MAX_EXTRA_VALUE
from daemon.events.formats.shipper_fields import kind, parse_level, parse_timestamp
from daemon.events.formats.traceback_text import ParsedTrace, parse_trace

__all__ = ["MAX_CHUNKS", "ChunkAssembler", "GelfError", "decode_payload", "to_sentry_event"]

MiB = 1024 * 1024
MAX_CHUNKS = 128  # the GELF spec's limit; Graylog drops messages announcing more
_MAGIC = b"\x1e\x0f"
_HEADER_SIZE = 12  # magic (2), message id (8), sequence number (1), sequence count (1)
_ENCODINGS = {"gzip": "gzip", "zlib": "deflate"}
_VERSIONS = ("1.1", "1.0")
_ABSENT_LEVEL = "fatal"  # GELF: a message without `level` is 1, alert
_MAX_TAG = 200  # Sentry's limit for a tag value
_LOGGER = ("_logger", "_logger_name")
_ENVIRONMENT = ("_environment", "_env")
_RELEASE = ("_release", "_version")
_TAGS = {"facility": "facility", "_container_name": "container_name",
         "_container_id": "container_id", "_image_name": "image_name",
         "_command": "command", "_tag": "tag"}


class GelfError(ValueError):
    """A chunk or message that cannot become an event; the message says why."""


@dataclass(slots=True)
class _Pending:
    created: float
    pieces: list[bytes | None]
    received: int = 0
    size: int = 0


class ChunkAssembler:
    """Reassembles chunked GELF messages, keyed by (sender, message id) so one sender's
    chunks can never complete or corrupt another's message.

    Memory is bounded by `max_messages` in flight and `max_bytes` buffered: when either
    would be exceeded the oldest incomplete messages are evicted, so a flood ages out
    instead of locking everyone else out. Messages still incomplete `timeout` seconds after
    their first chunk are dropped (Graylog waits 5 seconds too). Counters: `completed`,
    `duplicates` (repeated chunks, ignored), `expired`, `evicted`.
    """

    def __init__(self, timeout: float = 5.0, max_messages: int = 1000,
                 max_bytes: int = 64 * MiB, max_message_size: int = 8 * MiB,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if timeout <= 0 or max_messages < 1 or max_message_size < 1:
            raise ValueError("timeout, max_messages and max_message_size must be positive")
        if max_bytes < max_message_size:
            raise ValueError("max_bytes must be at least max_message_size")
        self.timeout = timeout
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_message_size = max_message_size
        self.completed = self.duplicates = self.expired = self.evicted = 0
        self._clock = clock
        # In order of first chunk, so the oldest message is always the first entry.
        self._pending: OrderedDict[tuple[Hashable, bytes], _Pending] = OrderedDict()
        self._bytes = 0

    @property
    def in_flight(self) -> int:
        """Incomplete messages currently held."""
        return len(self._pending)

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes of the incomplete messages currently held."""
        return self._bytes

    def add(self, sender: Hashable, datagram: bytes) -> bytes | None:
        """The reassembled payload when `datagram` completes its message, else None.
        Raises GelfError for a malformed chunk, for a chunk whose sequence count disagrees
        with its message's earlier chunks and when the message outgrows
        `max_message_size`; in the last two cases the whole message is dropped."""
        message_id, sequence, count, piece = _parse_chunk(datagram)
        now = self._clock()
        self._expire(now)
        key = (sender, message_id)
        pending = self._pending.get(key)
        if pending is None:
            if count == 1:
                if len(piece) > self.max_message_size:
                    raise self._too_large()
                self.completed += 1
                return piece
            while len(self._pending) >= self.max_messages:
                self._evict(key)
            pending = self._pending[key] = _Pending(now, [None] * count)
        elif len(pending.pieces) != count:
            self._drop(key)
            raise GelfError(f"chunk: sequence count {count} disagrees with "
                            f"{len(pending.pieces)} of earlier chunks; message dropped")
        if pending.pieces[sequence] is not None:
            self.duplicates += 1
            return None
        if pending.size + len(piece) > self.max_message_size:
            self._drop(key)
            raise self._too_large()
        while self._bytes + len(piece) > self.max_bytes:
            self._evict(key)
        pending.pieces[sequence] = piece
        pending.received += 1
        pending.size += len(piece)
        self._bytes += len(piece)
        if pending.received < count:
            return None
        self._drop(key)
        self.completed += 1
        return b"".join(piece for piece in pending.pieces if piece is not None)

    def expire(self) -> int:
        """Drop the messages whose first chunk is `timeout` seconds old or older; return
        how many. `add` also does this, so calling it is only needed to free memory
        while no chunks arrive."""
        return self._expire(self._clock())

    def _expire(self, now: float) -> int:
        dropped = 0
        deadline = now - self.timeout
        while self._pending:
            key, pending = next(iter(self._pending.items()))
            if pending.created > deadline:
                break
            self._drop(key)
            dropped += 1
        self.expired += dropped
        return dropped

    def _evict(self, keep: tuple[Hashable, bytes]) -> None:
        """Drop the oldest message other than `keep`; the callers' limits guarantee one
        exists (max_bytes is at least max_message_size)."""
        victim = next(key for key in self._pending if key != keep)
        self._drop(victim)
        self.evicted += 1

    def _drop(self, key: tuple[Hashable, bytes]) -> None:
        self._bytes -= self._pending.pop(key).size

    def _too_large(self) -> GelfError:
        return GelfError(f"chunk: message exceeds {self.max_message_size} bytes; "
                         "message dropped")


def _parse_chunk(datagram: bytes) -> tuple[bytes, int, int, bytes]:
    """(message id, sequence number, sequence count, piece) of one chunk datagram."""
    if len(datagram) < _HEADER_SIZE:
        raise GelfError(f"chunk: truncated header ({len(datagram)} of {_HEADER_SIZE} bytes)")
    if datagram[:2] != _MAGIC:
        raise GelfError("chunk: missing the magic bytes 1e 0f")
    sequence, count = datagram[10], datagram[11]
    if count == 0:
        raise GelfError("chunk: sequence count 0")
    if count > MAX_CHUNKS:
        raise GelfError(f"chunk: sequence count {count} > {MAX_CHUNKS}")
    if sequence >= count:
        raise GelfError(f"chunk: sequence {sequence} >= count {count}")
    return bytes(datagram[2:10]), sequence, count, bytes(datagram[_HEADER_SIZE:])


def decode_payload(data: bytes, limit: int) -> dict[str, Any]:
    """The JSON object of a complete GELF payload: plain, gzip or zlib, told apart by their
    magic bytes as Graylog does. Decompression stops once the output passes `limit`, so
    a bomb raises GelfError instead of taking memory."""
    detected = detect(data)
    if detected == "gelf_chunk":
        raise GelfError("gelf: payload is a chunk; reassemble its message first")
    if detected == "syslog":
        raise GelfError("gelf: payload is syslog (starts with '<'), not GELF")
    encoding = _ENCODINGS.get(detected)
    name = detected if encoding is not None else "gelf"
    try:
        raw = decompress(data, encoding, limit)
    except TooLarge:
        raise GelfError(f"{name}: payload exceeds {limit} bytes") from None
    except DecompressError as exc:
        raise GelfError(f"{name}: {str(exc).partition(': ')[2]}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GelfError(f"gelf: invalid UTF-8 at byte {exc.start}") from None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise GelfError(f"gelf: invalid JSON: {exc.msg} "
                        f"(line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(value, dict):
        raise GelfError(f"gelf: expected a JSON object, got {kind(value)}")
    return value


def to_sentry_event(message: dict[str, Any]) -> dict[str, Any]:
    """The Sentry event for one GELF message, per the table in this module's docstring.
    Raises GelfError when `version`, `host` or `short_message` is missing or unusable; an
    unusable level or timestamp is treated as absent and kept in `extra`."""
    if not isinstance(message, dict):
        raise GelfError(f"gelf: expected a JSON object, got {kind(message)}")
    version = _required(message, "version")
    if version not in _VERSIONS:
        raise GelfError(f'gelf: version must be "1.1" (or "1.0"), got {version!r:.40}')
    host = _required(message, "host")
    if not isinstance(host, str):
        raise GelfError(f"gelf: host must be a string, got {kind(host)}")
    if not host.strip():
        raise GelfError("gelf: host is empty")
    used: set[Any] = {"version", "host", "_id"}
    text, trace = _message_and_trace(message, used)
    event: dict[str, Any] = {"platform": "other", "level": _ABSENT_LEVEL, "server_name": host}
    if text is not None:
        event["message"] = text
        event["logentry"] = {"formatted": text}
    if trace is not None:
        event["platform"] = trace.platform
        event["exception"] = {"values": trace.values}
    with suppress(ValueError):
        event["level"] = parse_level("level", message.get("level"))
        used.add("level")
    with suppress(ValueError, OverflowError):
        seconds = parse_timestamp("timestamp", message.get("timestamp"))
        if seconds > 0:
            event["timestamp"] = seconds
            used.add("timestamp")
    for field, aliases in (("logger", _LOGGER), ("environment", _ENVIRONMENT),
                           ("release", _RELEASE)):
        for alias in aliases:
            value = _scalar_text(message.get(alias))
            if value is not None:
                event[field] = value
                used.add(alias)
                break
    tags: dict[str, str] = {}
    for alias, tag in _TAGS.items():
        value = _scalar_text(message.get(alias))
        if value is not None:
            tags[tag] = value[:_MAX_TAG]
            used.add(alias)
    if tags:
        event["tags"] = tags
    extra = _extra(message, used)
    if extra:
        event["extra"] = extra
    return event


def _required(message: dict[str, Any], field: str) -> Any:
    if field not in message:
        raise GelfError(f"gelf: missing required field {field}")
    return message[field]


def _message_and_trace(message: dict[str, Any], used: set[Any]
                       ) -> tuple[str | None, ParsedTrace | None]:
    """The event message and the ParsedTrace (or None) from short_message, message and
    full_message. Graylog falls back to `message` when short_message is blank; some
    senders leave it blank and put everything in full_message, which is accepted too."""
    if "short_message" in message:
        field = "short_message"
    elif "message" in message:
        field = "message"
    else:
        raise GelfError("gelf: missing required field short_message")
    short = message[field]
    if not isinstance(short, str):
        raise GelfError(f"gelf: {field} must be a string, got {kind(short)}")
    used.add(field)
    fallback = message.get("message")
    if not short.strip() and isinstance(fallback, str) and fallback.strip():
        short = fallback
        used.add("message")
    text = short.rstrip("\r\n") if short.strip() else None
    full = message.get("full_message")
    full = full if isinstance(full, str) and full.strip() else None
    trace = parse_trace(full) if full is not None else None
    if trace is not None:
        used.add("full_message")
    elif text is not None and "\n" in text:
        trace = parse_trace(text)
    elif text is None and full is not None:
        text = full.rstrip("\r\n")
        used.add("full_message")
    if text is None and trace is None:
        raise GelfError(f"gelf: {field} is empty and there is no full_message")
    return text, trace


def _scalar_text(value: Any) -> str | None:
    """A tag-like field as text: strings and numbers; anything else stays in extra."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def _extra(message: dict[str, Any], used: set[Any]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for key, value in message.items():
        if key in used or value is None:
            continue
        name = str(key)
        if name.startswith("_") and len(name) > 1:
            name = name[1:]
        if name in extra:
            continue
        if len(extra) == MAX_EXTRA_KEYS:
            break
        extra[name] = _bounded(value)
    return extra


def _bounded(value: Any) -> Any:
    """The value, or its first MAX_EXTRA_VALUE bytes as text when its JSON is longer."""
    try:
        encoded = orjson.dumps(value)
    except TypeError:
        value = repr(value)
        encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) <= MAX_EXTRA_VALUE:
        return value
    if isinstance(value, str):
        encoded = value.encode("utf-8", "surrogatepass")
    return encoded[:MAX_EXTRA_VALUE].decode("utf-8", "ignore")
