"""Envelope framing as SDKs write it (with and without lengths, binary attachments, missing
final newline), every malformed-input message, round trips of generated envelopes, and the
legacy store body forms (JSON, base64, base64 of zlib)."""

from __future__ import annotations

import base64
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.decompress import TooLarge
from daemon.events.formats.sentry_envelope import (
    MAX_EVENT_BYTES,
    Envelope,
    EnvelopeError,
    Item,
    decode_store_body,
    parse_envelope,
    parse_json_object,
)

EVENT_ID = "9ec79c33ec9942ab8353589fcb2e04dc"
DSN = "https://e12d836b15bb49d7bbf99e64295d995b@egen.example.com/42"


def test_js_style_envelope_without_lengths_or_final_newline() -> None:
    body = (b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc","sent_at":"2024-05-01T10:00:00Z",'
            b'"sdk":{"name":"sentry.javascript.browser","version":"8.0.0"}}\n'
            b'{"type":"event"}\n'
            b'{"message":"boom","level":"error"}')
    envelope = parse_envelope(body)
    assert envelope.event_id == EVENT_ID
    assert envelope.headers["sdk"]["name"] == "sentry.javascript.browser"
    assert envelope.items == (
        Item("event", {"type": "event"}, b'{"message":"boom","level":"error"}'),)


def test_python_style_envelope_with_lengths_and_final_newline() -> None:
    event = b'{"message":"boom"}'
    body = (b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc","dsn":"' + DSN.encode() + b'"}\n'
            b'{"type":"event","length":18,"content_type":"application/json"}\n' + event + b"\n"
            b'{"type":"session","length":2}\n{}\n')
    envelope = parse_envelope(body)
    assert envelope.dsn == DSN
    assert [item.type for item in envelope.items] == ["event", "session"]
    assert envelope.items[0].payload == event
    assert envelope.items[0].headers == {"type": "event", "length": 18,
                                         "content_type": "application/json"}
    assert envelope.items[1].payload == b"{}"


def test_length_lets_payload_contain_newlines() -> None:
    payload = b"line one\nline two\n\n"
    body = b'{}\n{"type":"attachment","length":%d}\n%s\n{"type":"event"}\n{}' % (
        len(payload), payload)
    envelope = parse_envelope(body)
    assert [item.payload for item in envelope.items] == [payload, b"{}"]


def test_length_reaching_exactly_the_end_of_body() -> None:
    envelope = parse_envelope(b'{}\n{"type":"attachment","length":5}\nhello')
    assert envelope.items[0].payload == b"hello"


def test_newline_after_a_length_payload_is_optional() -> None:
    envelope = parse_envelope(b'{}\n{"type":"a","length":3}\nabc{"type":"b","length":1}\nx')
    assert [(item.type, item.payload) for item in envelope.items] == [("a", b"abc"), ("b", b"x")]


@pytest.mark.parametrize(("body", "payloads"), [
    (b'{}\n{"type":"a","length":0}\n', [b""]),
    (b'{}\n{"type":"a","length":0}', [b""]),
    (b'{}\n{"type":"a"}\n\n{"type":"b"}\nx', [b"", b"x"]),
    (b'{}\n{"type":"a"}\n', [b""]),
    (b'{}\n{"type":"a"}', [b""]),
])
def test_empty_payloads(body: bytes, payloads: list[bytes]) -> None:
    assert [item.payload for item in parse_envelope(body).items] == payloads


def test_binary_attachment_kept_byte_for_byte() -> None:
    payload = bytes(range(256)) * 4
    header = orjson.dumps({"type": "attachment", "length": len(payload), "filename": "core.bin",
                           "content_type": "application/octet-stream"})
    envelope = parse_envelope(b'{"event_id":"%s"}\n%s\n%s\n' % (EVENT_ID.encode(), header, payload))
    (item,) = envelope.items
    assert item.payload == payload
    assert item.headers["filename"] == "core.bin"


def test_unknown_item_types_are_kept_for_the_caller() -> None:
    body = b'{}\n{"type":"profile_chunk_v9"}\n{"x":1}\n{"type":"event"}\n{}\n'
    assert [item.type for item in parse_envelope(body).items] == ["profile_chunk_v9", "event"]


@pytest.mark.parametrize("body", [b"{}", b"{}\n", b"{}\n\n\n", b'{"dsn":"x"}\n', b" { } \n"])
def test_envelope_with_no_items(body: bytes) -> None:
    assert parse_envelope(body).items == ()


def test_blank_lines_between_items_are_skipped() -> None:
    body = b'{}\n\n{"type":"a"}\n1\n\n\n{"type":"b","length":1}\n2\n\n'
    assert [item.payload for item in parse_envelope(body).items] == [b"1", b"2"]


def test_crlf_is_not_a_separator() -> None:
    # JSON headers tolerate the CR as whitespace, but a payload without a length keeps it.
    envelope = parse_envelope(b'{}\r\n{"type":"event"}\r\n{"a":1}\r\n')
    assert envelope.items[0].payload == b'{"a":1}\r'
    assert parse_json_object(envelope.items[0].payload, "event") == {"a": 1}
    # After a length payload the CR is where the next item header should start.
    with pytest.raises(EnvelopeError) as error:
        parse_envelope(b'{}\r\n{"type":"attachment","length":3}\r\nabc\r\n')
    assert str(error.value) == "item 2 header: invalid JSON at byte 41: input data is empty"


@pytest.mark.parametrize(("headers", "event_id", "dsn"), [
    ({}, None, None),
    ({"event_id": EVENT_ID, "dsn": DSN}, EVENT_ID, DSN),
    ({"event_id": 12, "dsn": None}, None, None),
])
def test_event_id_and_dsn_are_strings_or_none(headers: dict[str, Any], event_id: str | None,
                                              dsn: str | None) -> None:
    envelope = parse_envelope(orjson.dumps(headers))
    assert (envelope.event_id, envelope.dsn) == (event_id, dsn)


def test_null_length_means_no_length() -> None:
    envelope = parse_envelope(b'{}\n{"type":"event","length":null}\n{}\n')
    assert envelope.items[0].payload == b"{}"


@pytest.mark.parametrize(("body", "message"), [
    (b"", "envelope header: invalid JSON at byte 0: Input is a zero-length, empty document"),
    (b"\n{}", "envelope header: invalid JSON at byte 0: "
              "Input is a zero-length, empty document"),
    (b"[]\n", "envelope header: not a JSON object"),
    (b'"x"', "envelope header: not a JSON object"),
    (b'{"a":}\n', "envelope header: invalid JSON at byte 5: "
                  "unexpected character, expected a JSON value"),
    (b'{}\n{"type":"event"}\n{}\n{"type":"event",}\n',
     "item 2 header: invalid JSON at byte 38: trailing comma is not allowed"),
    (b'{}\n{"type":"event"\n', "item 1 header: invalid JSON at byte 18: unexpected end of data"),
    # Offsets count bytes, not characters: each "é" is two.
    ('{"é":1}\n{"tépé":x}\n'.encode(), "item 1 header: invalid JSON at byte 19: "
                                        "unexpected character, expected a JSON value"),
    (b'{}\n{"type":"\xff"}\n', "item 1 header: invalid JSON at byte 3: "
                               "str is not valid UTF-8: surrogates not allowed"),
    (b"{}\n[1]\n", "item 1 header: not a JSON object"),
    (b'{}\n{"length":2}\nab\n', "item 1 header: missing type"),
    (b'{}\n{"type":null}\nab\n', "item 1 header: missing type"),
    (b'{}\n{"type":7}\nab\n', "item 1 header: type must be a non-empty string"),
    (b'{}\n{"type":""}\nab\n', "item 1 header: type must be a non-empty string"),
    (b'{}\n{"type":"a","length":-1}\n', "item 1 header: length must be a non-negative integer"),
    (b'{}\n{"type":"a","length":"2"}\nab', "item 1 header: length must be a non-negative integer"),
    (b'{}\n{"type":"a","length":2.0}\nab', "item 1 header: length must be a non-negative integer"),
    (b'{}\n{"type":"a","length":true}\na', "item 1 header: length must be a non-negative integer"),
    (b'{}\n{"type":"a"}\n1\n{"type":"b"}\n2\n{"type":"c","length":500}\n' + b"x" * 120,
     "item 3: length 500 exceeds the 120 bytes left"),
    (b'{}\n{"type":"a","length":1}', "item 1: length 1 exceeds the 0 bytes left"),
    (b'{}\n{"type":"a","length":1}\n', "item 1: length 1 exceeds the 0 bytes left"),
])
def test_errors(body: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError) as error:
        parse_envelope(body)
    assert str(error.value) == message


def test_item_count_limit() -> None:
    items = b'{"type":"event"}\n{}\n'
    assert len(parse_envelope(b"{}\n" + items * 2, max_items=2).items) == 2
    with pytest.raises(EnvelopeError, match=r"^more than 2 items$"):
        parse_envelope(b"{}\n" + items * 3, max_items=2)
    assert len(parse_envelope(b"{}\n" + items * 1000).items) == 1000
    with pytest.raises(EnvelopeError, match=r"^more than 1000 items$"):
        parse_envelope(b"{}\n" + items * 1001)


def test_envelope_error_is_a_value_error() -> None:
    assert issubclass(EnvelopeError, ValueError)


@pytest.mark.parametrize(("payload", "message"), [
    (b"[1]", "item 1 (event): not a JSON object"),
    (b'{"a":1', "item 1 (event): invalid JSON at byte 6: unexpected end of data"),
    (b"", "item 1 (event): invalid JSON at byte 0: Input is a zero-length, empty document"),
])
def test_parse_json_object_errors(payload: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError) as error:
        parse_json_object(payload, "item 1 (event)")
    assert str(error.value) == message


def test_parse_json_object_returns_the_object() -> None:
    assert parse_json_object(b' {"a": [1, 2]} \n', "event") == {"a": [1, 2]}


# --- round trips and fuzzing ------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
EXTRA_HEADERS = st.dictionaries(TEXT.filter(lambda key: key not in ("type", "length")),
                                JSON_SCALARS, max_size=3)
ITEM_TYPES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
ENVELOPE_HEADERS = st.dictionaries(TEXT, JSON_SCALARS, max_size=4)


def serialize(headers: dict[str, Any], items: list[tuple[str, dict[str, Any], bytes]],
              *, with_length: bool, final_newline: bool = True) -> bytes:
    lines = [orjson.dumps(headers)]
    for item_type, extra, payload in items:
        item_headers = {**extra, "type": item_type}
        if with_length:
            item_headers["length"] = len(payload)
        lines += [orjson.dumps(item_headers), payload]
    return b"\n".join(lines) + (b"\n" if final_newline else b"")


@settings(max_examples=200, deadline=None)
@given(ENVELOPE_HEADERS, st.lists(st.tuples(ITEM_TYPES, EXTRA_HEADERS, st.binary(max_size=50)),
                                  max_size=6), st.booleans())
def test_round_trip_with_lengths(headers: dict[str, Any],
                                 items: list[tuple[str, dict[str, Any], bytes]],
                                 final_newline: bool) -> None:
    envelope = parse_envelope(serialize(headers, items, with_length=True,
                                        final_newline=final_newline))
    assert envelope == Envelope(headers, tuple(
        Item(item_type, {**extra, "type": item_type, "length": len(payload)}, payload)
        for item_type, extra, payload in items))


@settings(max_examples=200, deadline=None)
@given(ENVELOPE_HEADERS,
       st.lists(st.tuples(ITEM_TYPES, EXTRA_HEADERS,
                          st.binary(max_size=50).filter(lambda payload: b"\n" not in payload)),
                max_size=6),
       st.booleans())
def test_round_trip_without_lengths(headers: dict[str, Any],
                                    items: list[tuple[str, dict[str, Any], bytes]],
                                    final_newline: bool) -> None:
    envelope = parse_envelope(serialize(headers, items, with_length=False,
                                        final_newline=final_newline))
    assert envelope == Envelope(headers, tuple(
        Item(item_type, {**extra, "type": item_type}, payload)
        for item_type, extra, payload in items))


# Fragments that reach the deeper branches far more often than uniform random bytes do.
FRAGMENTS = st.sampled_from([b"{}", b"\n", b"\r", b'{"type":"event"}', b'{"type":"a",',
                             b'"length":', b"0", b"7", b"-1", b"}", b"[", b"x", b'"', b"\xff",
                             b'{"type":1}', b'{"length":3}', b"null"])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.lists(FRAGMENTS, max_size=30).map(b"".join),
       st.integers(0, 5))
def test_fuzz_parses_or_raises_envelope_error(body: bytes, max_items: int) -> None:
    try:
        envelope = parse_envelope(body, max_items=max_items)
    except EnvelopeError as error:
        assert str(error)
        return
    assert len(envelope.items) <= max_items
    assert all(item.type and item.payload in body for item in envelope.items)


# --- legacy store endpoint --------------------------------------------------------------

EVENT = {"event_id": EVENT_ID, "message": "boom", "extra": {"unicode": "é"}}
EVENT_JSON = orjson.dumps(EVENT)
# Trailing spaces (still valid JSON) bring the length to 1 mod 3, so "==" padding is dropped.
UNPADDED = base64.b64encode(EVENT_JSON + b" " * ((1 - len(EVENT_JSON)) % 3)).rstrip(b"=")


@pytest.mark.parametrize("body", [
    EVENT_JSON,
    b"  \r\n\t" + EVENT_JSON + b"\n",
    base64.b64encode(zlib.compress(EVENT_JSON)),  # raven-python, raven-js before 2016
    base64.b64encode(zlib.compress(EVENT_JSON)) + b"\n",
    base64.b64encode(EVENT_JSON),
    UNPADDED,
    base64.b64encode(b"  " + EVENT_JSON),
], ids=["json", "json-whitespace", "b64-zlib", "b64-zlib-newline", "b64-json",
        "b64-json-unpadded", "b64-json-whitespace"])
def test_store_body_forms(body: bytes) -> None:
    assert decode_store_body(body) == EVENT


def test_unpadded_fixture_really_lacks_padding() -> None:
    assert len(UNPADDED) % 4 == 2


@pytest.mark.parametrize("body", [
    b"",
    b"garbage!",
    b"bm90IGpzb24",  # base64 of "not json"
    base64.b64encode(b"[1, 2]"),
    base64.b64encode(zlib.compress(b"not json")),
    base64.b64encode(zlib.compress(b"[1]")),
    base64.b64encode(zlib.compress(EVENT_JSON)[:-6]),  # truncated zlib
    base64.b64encode(b"x\x9c" + b"\xff" * 10),  # zlib header, corrupt stream
    b"abcde",  # 5 base64 characters cannot be padded into whole bytes
    base64.b64encode(EVENT_JSON) + b"==",
    base64.urlsafe_b64encode(b"\xfb\xff" + EVENT_JSON),
], ids=["empty", "garbage", "b64-text", "b64-array", "b64-zlib-text", "b64-zlib-array",
        "b64-zlib-truncated", "b64-zlib-corrupt", "b64-bad-length", "b64-extra-padding",
        "urlsafe-b64"])
def test_store_body_garbage(body: bytes) -> None:
    with pytest.raises(EnvelopeError) as error:
        decode_store_body(body)
    assert str(error.value) == "store body: not JSON, nor base64 of (zlib-compressed) JSON"


def test_store_body_json_errors_are_precise() -> None:
    with pytest.raises(EnvelopeError) as error:
        decode_store_body(b'{"message": "boom",}')
    assert str(error.value) == "store body: invalid JSON at byte 18: trailing comma is not allowed"


@pytest.mark.parametrize("wrap", [
    lambda text: text,
    base64.b64encode,
    lambda text: base64.b64encode(zlib.compress(text)),
], ids=["json", "b64-json", "b64-zlib"])
def test_store_body_limit(wrap: Any) -> None:
    text = orjson.dumps({"padding": "x" * 100})
    assert decode_store_body(wrap(text), limit=len(text)) == {"padding": "x" * 100}
    with pytest.raises(TooLarge, match=rf"^decompressed body exceeds {len(text) - 1} bytes$"):
        decode_store_body(wrap(text), limit=len(text) - 1)


def test_store_body_zlib_bomb_stops_at_the_default_limit() -> None:
    bomb = zlib.compress(b'{"a":"' + b" " * (8 * MAX_EVENT_BYTES) + b'"}', 9)
    with pytest.raises(TooLarge, match=r"^decompressed body exceeds 1048576 bytes$"):
        decode_store_body(base64.b64encode(bomb))
    assert MAX_EVENT_BYTES == 1024 * 1024
