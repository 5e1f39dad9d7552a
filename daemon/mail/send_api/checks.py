"""Checks of single JSON values of a v3 mail send request (strings, addresses, header
maps), collecting every failure with the path of its field instead of stopping at the
first: what SendGrid's service does and its clients' users know how to read."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

from daemon.mail.intake.policy import validate_address
from daemon.mail.send_api.model import Address, FieldError

MAX_PERSONALIZATIONS = 1000        # SendGrid's limits, so a body SendGrid takes fits here too
MAX_TOTAL_RECIPIENTS = 1000
MAX_CATEGORIES = 10
MAX_CATEGORY_LENGTH = 255
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_HEADERS = 100
MAX_SUBJECT = 4000
MAX_NAME = 500
MAX_ITEMS = 1000                   # entries in any one array (SendGrid's recipient limit)
MAX_ERRORS = 100
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}"          # RFC 6838 restricted-name
MIME_TYPE = re.compile(f"{_TOKEN}/{_TOKEN}")
CONTENT_ID = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]{1,250}")
# Header fields the message builder writes or a relay owns; SendGrid reserves the same
# kind. Sender/Return-Path would name an address the sender policy never checked.
RESERVED_HEADERS = frozenset({
    "from", "to", "cc", "bcc", "reply-to", "subject", "sender", "return-path", "received",
    "dkim-signature", "arc-seal", "arc-message-signature", "arc-authentication-results",
    "authentication-results", "mime-version", "content-type", "content-transfer-encoding",
    "content-disposition", "x-sg-id", "x-sg-eid", "x-smtpapi",
})

class FieldChecker:
    """Collects every error instead of stopping at the first."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def fail(self, where: str | None, message: str) -> None:
        # Bounded, so that a body of a million bad entries is not answered (and logged)
        # with a million errors.
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(FieldError(message, where))
        elif len(self.errors) == MAX_ERRORS:
            self.errors.append(FieldError(f"more than {MAX_ERRORS} problems; the rest are "
                                          "not listed", None))

    def mapping(self, value: Any, where: str) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.fail(where, f"must be an object, not {kind_of(value)}")
        return None

    def items(self, value: Any, where: str) -> Iterator[tuple[str, Any]]:
        if isinstance(value, list) and len(value) > MAX_ITEMS:
            self.fail(where, f"has {len(value)} entries; at most {MAX_ITEMS} are allowed")
        elif isinstance(value, list):
            yield from ((f"{where}.{i}", item) for i, item in enumerate(value))
        else:
            self.fail(where, f"must be an array, not {kind_of(value)}")

    def text(self, value: Any, where: str, *, limit: int, empty: bool = False,
             one_line: bool = True) -> str | None:
        if value is None:
            self.fail(where, "is required")
            return None
        if not isinstance(value, str):
            self.fail(where, f"must be a string, not {kind_of(value)}")
            return None
        if not empty and not value.strip():
            self.fail(where, "must not be empty")
            return None
        if len(value) > limit:
            self.fail(where, f"is {len(value)} characters long; at most {limit} are allowed")
            return None
        bad = _control(value, one_line=one_line)
        if bad is not None:
            self.fail(where, f"contains the control character U+{ord(bad):04X}")
            return None
        if any("\ud800" <= c <= "\udfff" for c in value):
            self.fail(where, "contains an unpaired surrogate (not valid Unicode)")
            return None
        return value

    def address(self, value: Any, where: str) -> Address | None:
        obj = self.mapping(value, where)
        if obj is None:
            return None
        self.unknown(obj, where, {"email", "name"})
        if "email" not in obj:
            self.fail(f"{where}.email", "is required")
            return None
        email = self.text(obj["email"], f"{where}.email", limit=254)
        name = None
        if obj.get("name") is not None:
            name = self.text(obj["name"], f"{where}.name", limit=MAX_NAME, empty=True) or None
        if email is None:
            return None
        try:
            validate_address(email, smtputf8=False)
        except ValueError as err:
            self.fail(f"{where}.email", f"does not contain a valid address: {err}")
            return None
        return Address(email, name)

    def addresses(self, value: Any, where: str) -> tuple[Address, ...]:
        found = (self.address(item, at) for at, item in self.items(value, where))
        return tuple(a for a in found if a is not None)

    def strings(self, value: Any, where: str, *, limit: int) -> dict[str, str]:
        obj = self.mapping(value, where)
        if obj is None:
            return {}
        out = {}
        for key, item in obj.items():
            text = self.text(item, f"{where}.{key}", limit=limit, empty=True)
            if text is not None:
                out[key] = text
        return out

    def headers(self, value: Any, where: str) -> tuple[tuple[str, str], ...]:
        found = self.strings(value, where, limit=MAX_SUBJECT)
        if len(found) > MAX_HEADERS:
            self.fail(where, f"has {len(found)} headers; at most {MAX_HEADERS} are allowed")
            return ()
        out = []
        for name, text in found.items():
            if not _FIELD_NAME.fullmatch(name):
                self.fail(f"{where}.{name}", "is not a valid header name (printable ASCII "
                                              "without spaces or ':', at most 76 characters)")
            elif name.lower() in RESERVED_HEADERS:
                self.fail(f"{where}.{name}", f"the header {name} is reserved; set it with "
                                              "the fields of the request instead")
            else:
                out.append((name, text))
        return tuple(out)

    def custom_args(self, value: Any, where: str) -> dict[str, str]:
        found = self.strings(value, where, limit=MAX_CUSTOM_ARGS_BYTES)
        size = len(orjson.dumps(found))
        if size > MAX_CUSTOM_ARGS_BYTES:
            self.fail(where, f"are {size} bytes as JSON; at most {MAX_CUSTOM_ARGS_BYTES} "
                             "are allowed")
        return found

    def unknown(self, obj: dict[str, Any], where: str | None, known: set[str],
                refused: dict[str, str] | None = None,
                ignored: frozenset[str] = frozenset()) -> None:
        for key in obj:
            at = f"{where}.{key}" if where else key
            if refused and key in refused:
                self.fail(at, refused[key])
            elif key not in known and key not in ignored:
                self.fail(at, "is not a field of the v3 mail send request")


def kind_of(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "a value")


def _control(text: str, *, one_line: bool) -> str | None:
    """A control character, or on one line any line break Python's email package knows
    (U+0085, U+2028, U+2029 too: it refuses them in a header)."""
    allowed = "\t" if one_line else "\t\r\n"
    breaks = "\x85\u2028\u2029" if one_line else ""
    return next((c for c in text
                 if ((c < " " or c == "\x7f") and c not in allowed) or c in breaks), None)
