"""Parsers for the value syntaxes operators write in egen.toml: durations, sizes, addresses.

Pure functions that raise ValueError with the text an operator should read; the config
loader adds the file and key in front.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")


def parse_duration(text: str) -> float:
    """'30s', '5m', '1.5h', '5d', '250ms' -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (use a number and a unit: ms, s, m, h, d, w)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(text: str) -> int:
    """'25MB' (10^6), '64MiB' (2^20), '512' (bytes) -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (use a number and B, KB, MB, GB, KiB, MiB, GiB)")
    unit = (match.group(2) or "b").lower()
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_duration(seconds: float) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10),
                         ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(text: str, *, default_port: int | None = None) -> HostPort:
    """'127.0.0.1:2525', '[::1]:587', 'mail.example.com:25'; port 0 means 'any free port'."""
    bad = ValueError(f"{text!r} is not a valid host:port")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise bad
        port_text = rest[1:] if rest else ""
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
    else:
        if text.count(":") > 1:
            raise bad
        host, _, port_text = text.partition(":")
        if not _valid_host(host):
            raise bad
    if not port_text:
        if default_port is None:
            raise bad
        return HostPort(host, default_port)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise bad
    return HostPort(host, int(port_text))


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOSTNAME.match(host))
    return True
