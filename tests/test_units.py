"""Durations, sizes and addresses: the value syntaxes of egen.toml."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.units import (
    HostPort,
    format_duration,
    format_size,
    parse_duration,
    parse_host_port,
    parse_size,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("5m", 300), ("1.5h", 5400), ("5d", 432000), ("250ms", 0.25), ("2w", 1209600),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "s", "-5s", "5 minutes", "1e3s", "5M"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [
    ("25MB", 25_000_000), ("64MiB", 64 * 2**20), ("512", 512), ("1gib", 2**30), ("10KB", 10_000),
])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "-1MB", "12XB", "1.2.3MB"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:2525", HostPort("127.0.0.1", 2525)),
    ("[::1]:587", HostPort("::1", 587)),
    ("mail.example.com:25", HostPort("mail.example.com", 25)),
    ("0.0.0.0:0", HostPort("0.0.0.0", 0)),
])
def test_host_ports(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected
    assert parse_host_port(str(expected)) == expected


@pytest.mark.parametrize("text", [
    "0.0.0.0:99999", "127.0.0.1", "::1:25", "[::1", "[nothost]:25", "host name:25", ":25",
    "host:-1", "host:http", "-bad-.example:25",
])
def test_bad_host_ports(text: str) -> None:
    with pytest.raises(ValueError, match="is not a valid host:port"):
        parse_host_port(text)


@given(st.integers(min_value=1, max_value=10**7), st.sampled_from(["s", "m", "h", "d", "w"]))
def test_duration_round_trip(n: int, unit: str) -> None:
    seconds = parse_duration(f"{n}{unit}")
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=2**50))
def test_size_round_trip(n: int) -> None:
    assert parse_size(format_size(n)) == n


@given(st.text(max_size=40))
def test_parsers_raise_only_value_error(text: str) -> None:
    for parse in (parse_duration, parse_size, parse_host_port):
        with contextlib.suppress(ValueError):
            parse(text)
