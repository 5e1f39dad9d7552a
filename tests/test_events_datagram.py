"""Datagram kind detection: every magic number, Graylog's precedence between them, and the
near misses that must not be mistaken for a format."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.events.formats.datagram import KINDS, detect


@pytest.mark.parametrize(("data", "expected"), [
    (b"\x1e\x0f" + bytes(10) + b"{}", "gelf_chunk"),
    (b"\x1e\x0f", "gelf_chunk"),
    (gzip.compress(b'{"a":1}'), "gzip"),
    (b"\x1f\x8b", "gzip"),
    (zlib.compress(b'{"a":1}'), "zlib"),  # 78 9c
    (zlib.compress(b"x", 1), "zlib"),  # 78 01
    (zlib.compress(b"x", 9), "zlib"),  # 78 da
    (b"\x78\x5e", "zlib"),
    (b'{"version":"1.1"}', "json"),
    (b"{", "json"),
    (b' \t\r\n {"a": 1}', "json"),
    (b"<34>1 2003-10-11T22:14:15.003Z host app - - - msg", "syslog"),
    (b"<13>Oct 11 22:14:15 host app: msg", "syslog"),
    (b"", "unknown"),
    (b"\x1e", "unknown"),
    (b"\x1e\x0e" + bytes(12), "unknown"),
    (b"\x1f\x8c", "unknown"),
    (b"\x78\x9d", "unknown"),  # 0x789d is not a multiple of 31
    (b"\x78", "unknown"),
    (b"\x08\x1d", "unknown"),  # a valid zlib header, but not with the 32 KiB window
    (b"[1, 2]", "unknown"),
    (b"\xef\xbb\xbf{}", "unknown"),  # a byte order mark is not JSON whitespace
    (b"\x0b{}", "unknown"),  # neither is a vertical tab
    (b" <13>msg", "unknown"),
    (b"plain text", "unknown"),
])
def test_detect(data: bytes, expected: str) -> None:
    assert detect(data) == expected


def test_magic_numbers_win_over_later_rules() -> None:
    # Graylog checks the two magic bytes first: a chunk or gzip header decides the kind
    # whatever follows, and `{` only counts once no magic number matched.
    assert detect(b"\x1e\x0f{") == "gelf_chunk"
    assert detect(b"\x1f\x8b<13>") == "gzip"
    assert detect(b"\x78\x9c{") == "zlib"


def test_every_zlib_level_is_detected() -> None:
    assert {detect(zlib.compress(b"payload", level)) for level in range(10)} == {"zlib"}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_detect_always_answers_a_known_kind(data: bytes) -> None:
    kind = detect(data)
    assert kind in KINDS
    if kind == "json":
        assert data.strip(b" \t\r\n").startswith(b"{")
