"""GELF: chunk reassembly within bounded memory, capped payload decoding, and the mapping
to Sentry events, checked on hand-built messages and on the exact datagrams graypy and
pygelf put on the wire."""

from __future__ import annotations

import gzip
import itertools
import logging
import os
import socket
import struct
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import SimpleNamespace
from typing import Any

import graypy
import orjson
import pygelf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.events.formats.gelf import (
    ChunkAssembler,
    GelfError,
    decode_payload,
    to_sentry_event,
)
from daemon.events.formats.shipper import LEVELS

MiB = 1024 * 1024
ALICE = ("192.0.2.1", 40001)
BOB = ("192.0.2.2", 40002)
MID = b"\x01\x02\x03\x04\x05\x06\x07\x08"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chunk(seq: int, count: int, piece: bytes = b"x", mid: bytes = MID) -> bytes:
    return b"\x1e\x0f" + mid + bytes([seq, count]) + piece


def split(payload: bytes, size: int, mid: bytes = MID) -> list[bytes]:
    pieces = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
    return [chunk(seq, len(pieces), piece, mid) for seq, piece in enumerate(pieces)]


def feed(assembler: ChunkAssembler, sender: Any, datagrams: list[bytes]) -> list[bytes | None]:
    return [assembler.add(sender, datagram) for datagram in datagrams]


# Chunk reassembly


PAYLOAD = b'{"version":"1.1","host":"h","short_message":"' + b"m" * 250 + b'"}'


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]])
def test_chunks_reassemble_in_any_order(order: list[int]) -> None:
    assembler = ChunkAssembler()
    datagrams = split(PAYLOAD, 100)
    results = feed(assembler, ALICE, [datagrams[i] for i in order])
    assert results == [None, None, PAYLOAD]
    assert (assembler.completed, assembler.in_flight, assembler.buffered_bytes) == (1, 0, 0)


def test_duplicate_chunks_are_ignored_not_double_counted() -> None:
    assembler = ChunkAssembler()
    first, second, third = split(PAYLOAD, 100)
    assert feed(assembler, ALICE, [first, first, second, first, second]) == [None] * 5
    assert assembler.duplicates == 3
    assert assembler.buffered_bytes == 200
    assert assembler.add(ALICE, third) == PAYLOAD


def test_single_chunk_message_completes_at_once() -> None:
    assembler = ChunkAssembler()
    assert assembler.add(ALICE, chunk(0, 1, b"whole")) == b"whole"
    assert (assembler.completed, assembler.in_flight) == (1, 0)


def test_128_chunks_is_the_most_allowed() -> None:
    payload = bytes(range(128))
    assembler = ChunkAssembler()
    assert feed(assembler, ALICE, split(payload, 1))[-1] == payload


def test_incomplete_message_expires_after_the_timeout() -> None:
    clock = Clock()
    assembler = ChunkAssembler(timeout=5.0, clock=clock)
    first, second, third = split(PAYLOAD, 100)
    feed(assembler, ALICE, [first, second])
    clock.now += 4.9
    assert assembler.expire() == 0
    clock.now += 0.1
    assert assembler.expire() == 1
    assert (assembler.expired, assembler.in_flight, assembler.buffered_bytes) == (1, 0, 0)
    assert assembler.add(ALICE, third) is None  # the rest is gone: this starts over


def test_expiry_also_happens_inside_add_and_only_for_old_messages() -> None:
    clock = Clock()
    assembler = ChunkAssembler(timeout=5.0, clock=clock)
    assembler.add(ALICE, chunk(0, 2, mid=b"old-0001"))
    clock.now += 3
    assembler.add(ALICE, chunk(0, 2, mid=b"young-01"))
    clock.now += 2.5
    assert assembler.add(BOB, chunk(0, 2)) is None
    assert (assembler.expired, assembler.in_flight) == (1, 2)
    assert assembler.add(ALICE, chunk(1, 2, b"y", mid=b"young-01")) == b"xy"


def test_same_message_id_from_two_senders_is_kept_apart() -> None:
    assembler = ChunkAssembler()
    alice, bob = split(b"A" * 30, 10), split(b"B" * 30, 10)
    assert feed(assembler, ALICE, alice[:2]) == [None, None]
    assert feed(assembler, BOB, bob[1:]) == [None, None]
    assert assembler.in_flight == 2
    assert assembler.add(ALICE, alice[2]) == b"A" * 30
    assert assembler.add(BOB, bob[0]) == b"B" * 30


def test_count_disagreeing_with_earlier_chunks_drops_the_message() -> None:
    assembler = ChunkAssembler()
    assembler.add(ALICE, chunk(0, 3))
    with pytest.raises(GelfError) as error:
        assembler.add(ALICE, chunk(1, 4))
    assert str(error.value) == ("chunk: sequence count 4 disagrees with 3 of earlier chunks; "
                                "message dropped")
    assert (assembler.in_flight, assembler.buffered_bytes) == (0, 0)


@pytest.mark.parametrize(("datagram", "message"), [
    (b"", "chunk: truncated header (0 of 12 bytes)"),
    (b"\x1e\x0f" + MID + b"\x00", "chunk: truncated header (11 of 12 bytes)"),
    (b"\x1e\x0e" + MID + b"\x00\x02x", "chunk: missing the magic bytes 1e 0f"),
    (chunk(0, 0), "chunk: sequence count 0"),
    (chunk(0, 129), "chunk: sequence count 129 > 128"),
    (chunk(0, 255), "chunk: sequence count 255 > 128"),
    (chunk(5, 3), "chunk: sequence 5 >= count 3"),
    (chunk(3, 3), "chunk: sequence 3 >= count 3"),
])
def test_malformed_chunks(datagram: bytes, message: str) -> None:
    assembler = ChunkAssembler()
    with pytest.raises(GelfError) as error:
        assembler.add(ALICE, datagram)
    assert str(error.value) == message
    assert assembler.in_flight == 0


def test_message_over_max_message_size_is_dropped() -> None:
    assembler = ChunkAssembler(max_message_size=100, max_bytes=1000)
    assembler.add(ALICE, chunk(0, 3, b"a" * 60))
    with pytest.raises(GelfError, match=r"^chunk: message exceeds 100 bytes; message dropped$"):
        assembler.add(ALICE, chunk(1, 3, b"b" * 60))
    assert (assembler.in_flight, assembler.buffered_bytes) == (0, 0)
    with pytest.raises(GelfError, match=r"^chunk: message exceeds 100 bytes"):
        assembler.add(ALICE, chunk(0, 1, b"c" * 101))
    assert assembler.add(ALICE, chunk(0, 1, b"c" * 100)) == b"c" * 100


def test_flood_of_messages_evicts_the_oldest_and_others_still_complete() -> None:
    assembler = ChunkAssembler(max_messages=10)
    for number in range(50):
        assembler.add(BOB, chunk(0, 2, mid=number.to_bytes(8, "big")))
    assert (assembler.in_flight, assembler.evicted) == (10, 40)
    assert feed(assembler, ALICE, split(PAYLOAD, 200)) == [None, PAYLOAD]
    assert (assembler.in_flight, assembler.evicted) == (9, 41)
    # the survivors are the newest flood messages
    assert assembler.add(BOB, chunk(1, 2, b"y", mid=(49).to_bytes(8, "big"))) == b"xy"
    assert assembler.add(BOB, chunk(1, 2, b"y", mid=(40).to_bytes(8, "big"))) is None


def test_flood_of_bytes_evicts_the_oldest_and_memory_stays_bounded() -> None:
    assembler = ChunkAssembler(max_bytes=1000, max_message_size=500)
    for number in range(100):
        assembler.add(BOB, chunk(0, 3, b"f" * 100, mid=number.to_bytes(8, "big")))
        assert assembler.buffered_bytes <= 1000
    assert (assembler.in_flight, assembler.evicted) == (10, 90)
    payload = b"p" * 450
    assert feed(assembler, ALICE, split(payload, 150)) == [None, None, payload]
    assert assembler.buffered_bytes <= 1000 - 450
    assert assembler.evicted == 95


@pytest.mark.parametrize("kwargs", [
    {"timeout": 0}, {"max_messages": 0}, {"max_message_size": 0},
    {"max_bytes": 10, "max_message_size": 11},
])
def test_limits_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ChunkAssembler(**kwargs)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([ALICE, BOB]), st.one_of(
    st.binary(max_size=20),
    st.builds(lambda mid, seq, count, piece: b"\x1e\x0f" + mid + bytes([seq, count]) + piece,
              st.sampled_from([MID, b"\x00" * 8]), st.integers(0, 255),
              st.integers(0, 255), st.binary(max_size=40)))), max_size=60))
def test_fuzz_add_raises_only_gelf_error(datagrams: list[tuple[Any, bytes]]) -> None:
    clock = Clock()
    assembler = ChunkAssembler(max_messages=3, max_bytes=200, max_message_size=100,
                               clock=clock)
    for sender, datagram in datagrams:
        clock.now += 0.5
        try:
            result = assembler.add(sender, datagram)
        except GelfError:
            continue
        assert result is None or len(result) <= 100
        assert assembler.in_flight <= 3
        assert assembler.buffered_bytes <= 200


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_permutation_with_duplicates_reassembles_the_payload(data: st.DataObject) -> None:
    payload = data.draw(st.binary(max_size=3000))
    size = data.draw(st.integers(max(1, -(-len(payload) // 128)), 400))
    datagrams = split(payload, size)
    order = data.draw(st.permutations(range(len(datagrams))))
    repeats = data.draw(st.lists(st.sampled_from(order[:-1]), max_size=5) if len(order) > 1
                        else st.just([]))
    assembler = ChunkAssembler()
    results = feed(assembler, ALICE, [datagrams[i] for i in [*order[:-1], *repeats]])
    assert results == [None] * (len(order) - 1 + len(repeats))
    assert assembler.add(ALICE, datagrams[order[-1]]) == payload
    assert assembler.duplicates == len(repeats)


# Payload decoding


MESSAGE = {"version": "1.1", "host": "web-1", "short_message": "disk full"}
RAW = orjson.dumps(MESSAGE)


@pytest.mark.parametrize("data", [RAW, b" \r\n\t" + RAW, gzip.compress(RAW),
                                  zlib.compress(RAW), zlib.compress(RAW, 1)],
                         ids=["plain", "whitespace", "gzip", "zlib", "zlib-fast"])
def test_decode_payload(data: bytes) -> None:
    assert decode_payload(data, MiB) == MESSAGE


@pytest.mark.parametrize(("data", "message"), [
    (b"", "gelf: invalid JSON: Input is a zero-length, empty document (line 1, column 1)"),
    (b'{"a":', "gelf: invalid JSON: unexpected end of data (line 1, column 6)"),
    (b"[1]", "gelf: expected a JSON object, got array"),
    (b'{"a":"\xff"}', "gelf: invalid UTF-8 at byte 6"),
    (gzip.compress(b'{"a":"\xc3"}'), "gelf: invalid UTF-8 at byte 6"),
    (chunk(0, 2), "gelf: payload is a chunk; reassemble its message first"),
    (b"<13>Oct 11 22:14:15 host app: msg", "gelf: payload is syslog (starts with '<'), not GELF"),
    (b"\x1f\x8bnot gzip",
     "gzip: invalid data: Error -3 while decompressing data: unknown compression method"),
    (gzip.compress(RAW) + b"junk", "gzip: trailing data after the end of the stream"),
    (gzip.compress(RAW)[:-3], "gzip: truncated stream"),
    (zlib.compress(RAW)[:-3], "zlib: truncated stream"),
    (b"\x78\x9c" + b"\xff" * 10,
     "zlib: invalid data: Error -3 while decompressing data: invalid block type"),
    (gzip.compress(b"[]"), "gelf: expected a JSON object, got array"),
    (RAW + b"x" * 100, "gelf: payload exceeds 100 bytes"),
    (gzip.compress(RAW + b" " * 100), "gzip: payload exceeds 100 bytes"),
    (zlib.compress(RAW + b" " * 100), "zlib: payload exceeds 100 bytes"),
])
def test_decode_payload_errors(data: bytes, message: str) -> None:
    with pytest.raises(GelfError) as error:
        decode_payload(data, 100)
    assert str(error.value) == message


def _zeros_bomb(wbits: int, mib: int) -> bytes:
    """mib MiB of zeros as one valid stream, built from one repeated fully flushed segment
    so the test never compresses a GiB."""
    block = bytes(MiB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    segment = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    body = head + segment * (mib - 1) + b"\x03\x00"
    if wbits > 16:
        crc = 0
        for _ in range(mib):
            crc = zlib.crc32(block, crc)
        return body + struct.pack("<II", crc, mib * MiB & 0xFFFFFFFF)
    adler = 1
    for _ in range(mib):
        adler = zlib.adler32(block, adler)
    return body + struct.pack(">I", adler)


def test_bomb_builder_makes_a_valid_stream() -> None:
    assert zlib.decompress(_zeros_bomb(zlib.MAX_WBITS, 4)) == bytes(4 * MiB)


@pytest.mark.parametrize(("wbits", "name"), [(zlib.MAX_WBITS, "zlib"),
                                             (16 + zlib.MAX_WBITS, "gzip")])
def test_bomb_raises_quickly_in_small_memory(wbits: int, name: str) -> None:
    body = _zeros_bomb(wbits, 1024)  # 1 GiB of zeros
    assert len(body) < 2 * MiB
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(GelfError, match=rf"^{name}: payload exceeds 1048576 bytes$"):
            decode_payload(body, MiB)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MiB
    assert elapsed < 2.0


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.builds(lambda raw, cut: zlib.compress(raw)[:cut],
                           st.binary(max_size=100), st.integers(0, 120)),
                 st.builds(gzip.compress, st.binary(max_size=100))))
def test_fuzz_decode_payload_raises_only_gelf_error(data: bytes) -> None:
    with suppress(GelfError):
        assert isinstance(decode_payload(data, 4096), dict)


# Mapping to Sentry events


def event_of(**fields: Any) -> dict[str, Any]:
    return to_sentry_event({**MESSAGE, **fields})


def test_minimal_message() -> None:
    assert to_sentry_event(MESSAGE) == {
        "platform": "other", "level": "fatal", "server_name": "web-1",
        "message": "disk full", "logentry": {"formatted": "disk full"}}


@pytest.mark.parametrize(("message", "error"), [
    ([MESSAGE], "gelf: expected a JSON object, got array"),
    ({"host": "h", "short_message": "m"}, "gelf: missing required field version"),
    ({**MESSAGE, "version": "2.0"}, """gelf: version must be "1.1" (or "1.0"), got '2.0'"""),
    ({**MESSAGE, "version": 1.1}, 'gelf: version must be "1.1" (or "1.0"), got 1.1'),
    ({**MESSAGE, "version": "x" * 50},
     f"""gelf: version must be "1.1" (or "1.0"), got '{"x" * 39}"""),
    ({"version": "1.1", "short_message": "m"}, "gelf: missing required field host"),
    ({**MESSAGE, "host": 42}, "gelf: host must be a string, got number"),
    ({**MESSAGE, "host": " "}, "gelf: host is empty"),
    ({"version": "1.1", "host": "h"}, "gelf: missing required field short_message"),
    ({**MESSAGE, "short_message": 5}, "gelf: short_message must be a string, got number"),
    ({**MESSAGE, "short_message": None}, "gelf: short_message must be a string, got null"),
    ({**MESSAGE, "short_message": ""}, "gelf: short_message is empty and there is no full_message"),
    ({**MESSAGE, "short_message": " \n", "full_message": "  "},
     "gelf: short_message is empty and there is no full_message"),
    ({"version": "1.1", "host": "h", "message": {}}, "gelf: message must be a string, got object"),
])
def test_invalid_messages(message: Any, error: str) -> None:
    with pytest.raises(GelfError) as raised:
        to_sentry_event(message)
    assert str(raised.value) == error


@pytest.mark.parametrize(("level", "expected"), [
    (0, "fatal"), (1, "fatal"), (2, "fatal"), (3, "error"), (4, "warning"), (5, "info"),
    (6, "info"), (7, "debug"), ("3", "error"), ("err", "error"), ("WARNING", "warning"),
    (25, "info"), (None, "fatal"),  # graypy sends Python's number for custom levels
])
def test_levels(level: Any, expected: str) -> None:
    event = event_of(level=level)
    assert event["level"] == expected
    assert "extra" not in event


@pytest.mark.parametrize("level", ["banana", -1, 3.5, [3], True])
def test_unusable_level_counts_as_absent_and_is_kept(level: Any) -> None:
    event = event_of(level=level)
    assert (event["level"], event["extra"]) == ("fatal", {"level": level})


@pytest.mark.parametrize(("timestamp", "expected"), [
    (1700000000.125, 1700000000.125), (1700000000, 1700000000.0),
    ("1700000000.5", 1700000000.5), (1700000000125, 1700000000.125),
])
def test_timestamps(timestamp: Any, expected: float) -> None:
    assert event_of(timestamp=timestamp)["timestamp"] == expected


@pytest.mark.parametrize("timestamp", ["soon", 0, -5, {"s": 1}])
def test_unusable_timestamp_means_arrival_time(timestamp: Any) -> None:
    event = event_of(timestamp=timestamp)
    assert "timestamp" not in event
    assert event["extra"] == {"timestamp": timestamp}


PY_TRACE = """Traceback (most recent call last):
  File "/srv/app/jobs.py", line 12, in run
    sync()
  File "/srv/app/sync.py", line 40, in sync
    raise KeyError("sku")
KeyError: 'sku'"""
JAVA_TRACE = """java.lang.IllegalStateException: closed
\tat com.shop.Pool.take(Pool.java:88)
\tat com.shop.Main.main(Main.java:12)"""


def test_traceback_in_full_message_becomes_the_exception() -> None:
    event = event_of(full_message=PY_TRACE)
    assert event["platform"] == "python"
    assert event["message"] == "disk full"
    (value,) = event["exception"]["values"]
    assert (value["type"], value["value"]) == ("KeyError", "'sku'")
    frames = value["stacktrace"]["frames"]
    assert [(f["function"], f["lineno"]) for f in frames] == [("run", 12), ("sync", 40)]
    assert "extra" not in event


def test_java_trace_sets_platform_java() -> None:
    event = event_of(full_message=JAVA_TRACE)
    assert event["platform"] == "java"
    assert event["exception"]["values"][0]["type"] == "IllegalStateException"


def test_trace_in_a_multiline_short_message() -> None:
    event = event_of(short_message=PY_TRACE)
    assert event["exception"]["values"][0]["type"] == "KeyError"
    assert event["message"] == PY_TRACE


def test_full_message_without_a_trace_goes_to_extra() -> None:
    event = event_of(full_message="disk full\nmount /var at 100%")
    assert event["platform"] == "other"
    assert "exception" not in event
    assert event["extra"] == {"full_message": "disk full\nmount /var at 100%"}


def test_empty_short_message_falls_back_to_message_then_full_message() -> None:
    assert event_of(short_message="", message="from message")["message"] == "from message"
    event = event_of(short_message="", full_message="the whole story\n")
    assert (event["message"], event["logentry"]) == ("the whole story",
                                                     {"formatted": "the whole story"})
    assert "extra" not in event
    event = event_of(short_message=" ", full_message=PY_TRACE)
    assert "message" not in event
    assert event["exception"]["values"][0]["value"] == "'sku'"


def test_message_field_stands_in_for_a_missing_short_message() -> None:
    event = to_sentry_event({"version": "1.1", "host": "h", "message": "hello\r\n"})
    assert event["message"] == "hello"


@pytest.mark.parametrize(("fields", "expected", "extra"), [
    ({"_logger": "app.db"}, {"logger": "app.db"}, {}),
    ({"_logger_name": "app.db"}, {"logger": "app.db"}, {}),
    ({"_logger": "a", "_logger_name": "b"}, {"logger": "a"}, {"logger_name": "b"}),
    ({"_environment": "prod", "_env": "dev"}, {"environment": "prod"}, {"env": "dev"}),
    ({"_env": "staging"}, {"environment": "staging"}, {}),
    ({"_release": "2.4.1", "_version": "9"}, {"release": "2.4.1"}, {"version": "9"}),
    ({"_version": 3}, {"release": "3"}, {}),
    ({"_logger": ["x"], "_release": " "}, {}, {"logger": ["x"], "release": " "}),
])
def test_logger_environment_release(fields: dict[str, Any], expected: dict[str, str],
                                    extra: dict[str, Any]) -> None:
    event = event_of(**fields)
    assert {key: event[key] for key in ("logger", "environment", "release")
            if key in event} == expected
    assert event.get("extra", {}) == extra


def test_facility_and_docker_fields_are_tags() -> None:
    event = event_of(facility="local7", _container_name="web", _container_id="4f2a",
                     _image_name="shop:2", _command="gunicorn app", _tag="4f2a9",
                     _image_id="sha256:77")
    assert event["tags"] == {"facility": "local7", "container_name": "web",
                             "container_id": "4f2a", "image_name": "shop:2",
                             "command": "gunicorn app", "tag": "4f2a9"}
    assert event["extra"] == {"image_id": "sha256:77"}


def test_tag_values_are_capped_and_objects_stay_in_extra() -> None:
    event = event_of(_command="x" * 500, facility={"name": "kern"})
    assert event["tags"] == {"command": "x" * 200}
    assert event["extra"] == {"facility": {"name": "kern"}}


def test_additional_fields_go_to_extra() -> None:
    event = event_of(_id="reserved", _request_id="r-1", _user={"id": 7}, _file="app.py",
                     _line=12, _function="run", file="/srv/app.py", line=3, _empty=None,
                     _x="underscored", x="plain", _="bare")
    assert event["extra"] == {"request_id": "r-1", "user": {"id": 7}, "file": "app.py",
                              "line": 12, "function": "run", "x": "underscored", "_": "bare"}


def test_extra_is_bounded() -> None:
    event = event_of(**{f"_field{i:03}": i for i in range(150)}, _big="é" * 20000)
    assert len(event["extra"]) == 100
    assert list(event["extra"])[-1] == "field099"
    event = event_of(_big="é" * 20000, _list=list(range(10000)))
    assert event["extra"]["big"] == "é" * 8192
    assert len(event["extra"]["list"].encode()) == 16 * 1024
    assert event["extra"]["list"].startswith("[0,1,2,")


def test_docker_gelf_driver_message() -> None:
    # What Docker's gelf log driver sends (gzip by default); the level is omitted whenever
    # it is 0, and stdout lines carry no trace.
    payload = gzip.compress(orjson.dumps({
        "version": "1.1", "host": "docker-7", "short_message": "GET /health 200",
        "timestamp": 1700000000.042, "_command": "nginx -g daemon off;",
        "_container_id": "4f2a9c0e1b2d", "_container_name": "edge", "_created":
        "2024-01-02T03:04:05.6Z", "_image_id": "sha256:deadbeef", "_image_name": "nginx:1.25",
        "_tag": "4f2a9c0e1b2d"}))
    event = to_sentry_event(decode_payload(payload, MiB))
    assert event == {
        "platform": "other", "level": "fatal", "server_name": "docker-7",
        "message": "GET /health 200", "logentry": {"formatted": "GET /health 200"},
        "timestamp": 1700000000.042,
        "tags": {"container_name": "edge", "container_id": "4f2a9c0e1b2d",
                 "image_name": "nginx:1.25", "command": "nginx -g daemon off;",
                 "tag": "4f2a9c0e1b2d"},
        "extra": {"created": "2024-01-02T03:04:05.6Z", "image_id": "sha256:deadbeef"}}


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text())
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=10)
KEYS = st.one_of(st.sampled_from(["version", "host", "short_message", "message",
                                  "full_message", "level", "timestamp", "facility", "_id",
                                  "_logger", "_env", "_version", "_tag", "_x", "x"]),
                 st.text(max_size=8))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(KEYS, JSON_VALUES, max_size=12), st.booleans(),
       st.sampled_from(["", "m", PY_TRACE, JAVA_TRACE]))
def test_fuzz_to_sentry_event_raises_only_gelf_error(message: dict[str, Any], valid: bool,
                                                     text: str) -> None:
    if valid:
        message = {**message, "version": "1.1", "host": "h", "short_message": text,
                   "full_message": text}
    try:
        event = to_sentry_event(message)
    except GelfError:
        assert not valid or not text
        return
    assert event["level"] in LEVELS
    assert "message" in event or "exception" in event
    assert len(event.get("extra", {})) <= 100
    orjson.dumps(event)


# Real emitters: the datagrams graypy and pygelf send, captured at the socket


@contextmanager
def wire(handler: logging.Handler) -> Iterator[tuple[logging.Logger, list[bytes]]]:
    """A logger whose records go through `handler`'s own emit and send, with the socket
    replaced by a list of the datagrams it would have sent."""
    sent: list[bytes] = []
    handler.sock = SimpleNamespace(  # type: ignore[attr-defined]
        sendto=lambda data, address: sent.append(bytes(data)), close=lambda: None)
    logger = logging.getLogger(f"shop.orders.{id(handler)}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield logger, sent
    finally:
        logger.removeHandler(handler)
        handler.close()


def receive(datagrams: list[bytes], sender: Any = ALICE) -> list[dict[str, Any]]:
    """What the UDP listener will do with each datagram."""
    assembler = ChunkAssembler()
    events = []
    for datagram in datagrams:
        payload = assembler.add(sender, datagram) if datagram[:2] == b"\x1e\x0f" else datagram
        if payload is not None:
            events.append(to_sentry_event(decode_payload(payload, 8 * MiB)))
    assert assembler.in_flight == 0
    return events


def checkout() -> None:
    raise ValueError("card declined")


def log_exception(logger: logging.Logger) -> None:
    try:
        checkout()
    except ValueError:
        logger.exception("payment %s failed", "p-17", extra={"order": 17})


def graypy_handler(chunk_size: int = graypy.handler.WAN_CHUNK, **kwargs: Any) -> logging.Handler:
    chunker = graypy.handler.GELFWarningChunker(chunk_size=chunk_size)
    return graypy.GELFUDPHandler("127.0.0.1", 12201, gelf_chunker=chunker,
                                 localname="web-1", **kwargs)


def pygelf_handler(chunk_size: int = 1300) -> logging.Handler:
    return pygelf.GelfUdpHandler("127.0.0.1", 12201, chunk_size=chunk_size, debug=True,
                                 include_extra_fields=True, _app_name="shop")


def assert_checkout_exception(event: dict[str, Any]) -> None:
    assert (event["platform"], event["level"]) == ("python", "error")
    assert event["message"] == "payment p-17 failed"
    (value,) = event["exception"]["values"]
    assert (value["type"], value["value"]) == ("ValueError", "card declined")
    frames = value["stacktrace"]["frames"]
    assert [frame["function"] for frame in frames] == ["log_exception", "checkout"]
    assert frames[-1]["context_line"] == 'raise ValueError("card declined")'
    assert frames[-1]["abs_path"] == __file__
    assert "full_message" not in event.get("extra", {})


def test_graypy_plain_record() -> None:
    with wire(graypy_handler()) as (logger, sent):
        logger.warning("stock low: %d left", 3, extra={"sku": "A-1"})
    assert [datagram[:2] for datagram in sent] == [b"\x78\x9c"]  # zlib, not chunked
    (event,) = receive(sent)
    assert (event["level"], event["server_name"]) == ("warning", "web-1")
    assert event["message"] == "stock low: 3 left"
    assert event["tags"] == {"facility": logger.name}  # graypy puts the logger name there
    assert "logger" not in event
    extra = event["extra"]
    assert (extra["sku"], extra["function"], extra["file"]) == ("A-1", "test_graypy_plain_record",
                                                                __file__)
    assert extra["pid"] == os.getpid()
    assert "stack_info" not in extra  # sent as null
    assert abs(event["timestamp"] - time.time()) < 60


def test_graypy_exception_and_custom_facility() -> None:
    with wire(graypy_handler(facility="payments")) as (logger, sent):
        log_exception(logger)
    (event,) = receive(sent)
    assert_checkout_exception(event)
    assert (event["logger"], event["tags"]) == (logger.name, {"facility": "payments"})
    assert event["extra"]["order"] == 17


def test_graypy_large_message_in_many_chunks() -> None:
    text = os.urandom(6000).hex()  # incompressible enough to need ~60 chunks of 100 bytes
    with wire(graypy_handler(chunk_size=100)) as (logger, sent):
        logger.error("dump %s", text)
    assert 40 < len(sent) <= 128
    assert {datagram[:2] for datagram in sent} == {b"\x1e\x0f"}
    (event,) = receive(sent[::-1])
    assert event["message"] == f"dump {text}"


def test_graypy_exactly_chunk_size_is_sent_as_one_chunk() -> None:
    handler = graypy_handler(compress=False)
    record = logging.LogRecord("shop", logging.INFO, __file__, 1, "m", None, None)
    size = len(handler.makePickle(record))  # type: ignore[attr-defined]
    handler.gelf_chunker.chunk_size = size  # type: ignore[attr-defined]
    with wire(handler) as (_, sent):
        handler.handle(record)
    assert [(datagram[:2], datagram[10:12]) for datagram in sent] == [(b"\x1e\x0f",
                                                                       b"\x00\x01")]
    assert receive(sent)[0]["message"] == "m"


def test_pygelf_plain_record() -> None:
    with wire(pygelf_handler()) as (logger, sent):
        logger.info("order %s shipped", "o-9", extra={"carrier": "dhl"})
    (event,) = receive(sent)
    assert (event["level"], event["platform"]) == ("info", "other")
    assert event["server_name"] == socket.gethostname()
    assert event["logger"] == logger.name
    assert "tags" not in event
    extra = event["extra"]
    assert (extra["app_name"], extra["carrier"], extra["file"], extra["module"], extra["func"]) \
        == ("shop", "dhl", os.path.basename(__file__), "test_events_gelf",
            "test_pygelf_plain_record")


def test_pygelf_exception() -> None:
    with wire(pygelf_handler()) as (logger, sent):
        log_exception(logger)
    (event,) = receive(sent)
    assert_checkout_exception(event)
    assert event["extra"]["order"] == 17


def test_pygelf_large_message_in_many_chunks() -> None:
    text = os.urandom(6000).hex()
    with wire(pygelf_handler(chunk_size=100)) as (logger, sent):
        logger.critical("dump %s", text)
    assert 40 < len(sent) < 128  # pygelf packs the count as a signed byte
    events = receive([sent[i] for i in [*range(1, len(sent), 2), *range(0, len(sent), 2)]])
    assert [(event["message"], event["level"]) for event in events] == [(f"dump {text}",
                                                                         "fatal")]


def test_real_chunks_from_two_senders_with_the_same_message_id() -> None:
    text = os.urandom(1500).hex()
    with wire(pygelf_handler(chunk_size=200)) as (logger, sent):
        logger.error("%s", text)
        first = len(sent)
        logger.error("%s", text[::-1])
    alice = [(ALICE, datagram) for datagram in sent[:first]]
    message_id = sent[0][2:10]
    bob = [(BOB, datagram[:2] + message_id + datagram[10:]) for datagram in sent[first:]]
    assembler = ChunkAssembler()
    results = [assembler.add(*item) for pair in itertools.zip_longest(alice, bob)
               for item in pair if item is not None]
    payloads = [decode_payload(p, MiB)["short_message"] for p in results if p is not None]
    assert sorted(payloads) == sorted([text, text[::-1]])
    assert assembler.in_flight == 0
