"""Message parameterization: the variable parts of a message replaced by placeholders.

"Processed 17 items in 3.2s" and "Processed 5 items in 0.7s" are one problem, so grouping
hashes "Processed <int> items in <float>s". Runs for every message event, so it is a single
pass of one precompiled alternation over the text.

A token must stand alone: not preceded by a word character or a `.`, not followed by a word
character (a number may be followed by a unit: `17ms`, `3.2s`). A placeholder counts as a
word at the edges, so a token next to one that was replaced sees the same kind of neighbour
on a second run as on the first: the function is idempotent. Digits inside identifiers
(`utf8`, `sha256`) and version strings (`1.2.3`) stay.
"""

from __future__ import annotations

import re

_HEX = "[0-9a-fA-F]"
_H4 = f"{_HEX}{{1,4}}"
_IPV6 = "|".join((
    f"(?:{_H4}:){{7}}{_H4}",
    f"(?:{_H4}:){{1,7}}:",
    f"(?:{_H4}:){{1,6}}:{_H4}",
    f"(?:{_H4}:){{1,5}}(?::{_H4}){{1,2}}",
    f"(?:{_H4}:){{1,4}}(?::{_H4}){{1,3}}",
    f"(?:{_H4}:){{1,3}}(?::{_H4}){{1,4}}",
    f"(?:{_H4}:){{1,2}}(?::{_H4}){{1,5}}",
    f"{_H4}:(?::{_H4}){{1,6}}",
    f":(?::{_H4}){{1,7}}",
))
_MONTH = "(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_TIME = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?"
_ZONE = r"(?:Z|[+-]\d{2}:?\d{2})"
_DATE = "|".join((
    rf"\d{{4}}-\d{{2}}-\d{{2}}(?:[T ]{_TIME}{_ZONE}?)?",  # ISO 8601 / RFC 3339
    rf"{_DAY},[ ]\d{{1,2}}[ ]{_MONTH}[ ]\d{{4}}[ ]{_TIME}[ ](?:[+-]\d{{4}}|GMT|UTC)",  # RFC 2822
    rf"\d{{2}}:\d{{2}}:\d{{2}}(?:[.,]\d+)?{_ZONE}?",  # a bare time of day
))
_NAMES = ("email", "url", "uuid", "date", "ip", "hex", "float", "int", "quoted")
_NOT_AFTER_PLACEHOLDER = "".join(  # a lookbehind has one width: one per name length
    f"(?<!<(?:{'|'.join(n for n in _NAMES if len(n) == size)})>)"
    for size in sorted({len(n) for n in _NAMES}))
_PLACEHOLDER = f"<(?:{'|'.join(_NAMES)})>"
_END = rf"(?!\w|{_PLACEHOLDER})"  # then a separator, not a word or a placeholder
_NUMBER_END = rf"(?!\d|\.\d|{_PLACEHOLDER})"

# Order is priority at a given position: the first alternative that matches wins. The
# shared start condition comes first so that most positions (inside words) fail at once.
_TOKENS = re.compile(
    rf"""
    (?<![\w.]){_NOT_AFTER_PLACEHOLDER}(?:
      (?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)+{_END})
    | (?P<url>[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'"<>]*[^\s'"<>.,;:!?)\]}}])
    | (?P<uuid>{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}{_END})
    | (?P<date>(?:{_DATE}){_END}(?![.:]\d))
    | (?P<ip>(?<!:)(?:\d{{1,3}}(?:\.\d{{1,3}}){{3}}|{_IPV6}){_END}(?![:.]\d|:))
    | (?P<hex>(?:0[xX]{_HEX}+|(?=\d*[a-fA-F])(?=[a-fA-F]*\d){_HEX}{{8,}}){_END})
    | (?P<float>-?(?:\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+){_NUMBER_END})
    | (?P<int>-?\d+{_NUMBER_END})
    | (?P<quoted>(?:'(?:(?!{_PLACEHOLDER})[^'\n])*'|"(?:(?!{_PLACEHOLDER})[^"\n])*"){_END})
    )
    """,
    re.VERBOSE | re.ASCII,
)
_PLACEHOLDERS = {name: f"<{name}>" for name in _NAMES}


def _placeholder(match: re.Match[str]) -> str:
    return _PLACEHOLDERS[match.lastgroup or ""]


def parameterize(message: str) -> str:
    """`message` with emails, URLs, IPs, UUIDs, hex strings, dates, numbers and quoted strings
    replaced by `<email>`, `<url>`, `<ip>`, `<uuid>`, `<hex>`, `<date>`, `<float>`, `<int>`,
    `<quoted>`. Idempotent; messages that differ only in such values map to one string."""
    return _TOKENS.sub(_placeholder, message)
