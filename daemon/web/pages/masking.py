"""Masks what an event carries that nobody reading an error should see: values under
names like password, secret, token, authorization, cookie or api_key (request headers,
cookies, query parameters, form data, frame variables, extra), and the password in a URL
(`postgres://app:hunter2@db/app`).

Sentry scrubs the same names at ingest; egen stores events as they came and masks when
it shows or exports them, so what the pages and the JSON download give out is always
masked, whatever the SDK was configured to send.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

MASK = "[masked]"
# Substrings of names (compared in lowercase, with '-' read as '_'), as Sentry's data
# scrubber and Relay's default PII rules list them.
SENSITIVE = ("password", "passwd", "pwd", "secret", "token", "auth", "cookie", "session",
             "csrf", "xsrf", "api_key", "apikey", "access_key", "private_key", "privatekey",
             "credential", "signature", "dsn", "jwt", "bearer")
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^:/@\s]*:)([^@\s/]+)(@)", re.IGNORECASE)
_BEARER = re.compile(r"\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=\-]{8,}", re.IGNORECASE)
_QUERY_PARAM = re.compile(r"([?&;])([^=&#;\s]+)=([^&#;\s]*)")
MAX_DEPTH = 32


def sensitive(name: str) -> bool:
    folded = name.lower().replace("-", "_")
    return any(part in folded for part in SENSITIVE)


def mask_text(text: str) -> str:
    """`text` with URL passwords and bearer-style credentials replaced."""
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m[1]}{MASK}{m[3]}", text)
        if "?" in text:             # https://host/cb?api_key=…: the parameter's value
            text = _QUERY_PARAM.sub(lambda m: f"{m[1]}{m[2]}={MASK}" if sensitive(m[2])
                                    else m[0], text)
    if " " in text:
        text = _BEARER.sub(lambda m: f"{m[1]} {MASK}", text)
    return text


def mask_query(query: str) -> str:
    """A query string with the values of sensitive parameters masked."""
    if not any(sensitive(name) for name, _ in parse_qsl(query, keep_blank_values=True)):
        return mask_text(query)
    pairs = [(name, MASK if sensitive(name) else mask_text(value))
             for name, value in parse_qsl(query, keep_blank_values=True)]
    return urlencode(pairs, safe="[]")


def mask(value: Any, depth: int = 0) -> Any:
    """A copy of a JSON value with every value under a sensitive name masked (objects,
    and [name, value] pairs as Sentry sends headers), and URL passwords hidden in every
    string. Deeper than MAX_DEPTH, a value is masked whole rather than walked."""
    if depth > MAX_DEPTH:
        return MASK
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        masked: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(key, str) and sensitive(key) and isinstance(item, dict):
                # cookies: which ones were sent is useful, their values are not
                masked[key] = {k: MASK for k in item}
            elif isinstance(key, str) and sensitive(key) and item not in (None, "", []):
                masked[key] = MASK
            elif key == "query_string" and isinstance(item, str):
                masked[key] = mask_query(item)
            else:
                masked[key] = mask(item, depth + 1)
        return masked
    if isinstance(value, list):
        if (len(value) == 2 and isinstance(value[0], str) and sensitive(value[0])
                and not isinstance(value[1], dict | list)):
            return [value[0], MASK]
        return [mask(item, depth + 1) for item in value]
    return value
