"""The body of SendGrid's v3 `POST /v3/mail/send`, checked and turned into plain values.

Hand-written because SendGrid ships only clients, not a validator: the official SDKs
build this JSON, and what the service refuses is documented only as error texts. Every
problem is reported, each with the path of the field it concerns in SendGrid's own
notation (`personalizations.0.to.1.email`), so an application moving from SendGrid sees
the errors it already knows how to read; nothing is queued unless the whole body is good.

What egen does not do is refused by name rather than ignored: templates, substitutions,
scheduled sending and unsubscribe groups all change what a recipient gets, and mail sent
without them would be wrong mail. Settings that only concern SendGrid's own bookkeeping
(tracking, IP pools, suppression bypasses: egen keeps no suppression list) are accepted
and have no effect.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
from collections.abc import Iterator
from typing import Any

import orjson

from daemon.mail.send_api.checks import (
    CONTENT_ID,
    MAX_CATEGORIES,
    MAX_CATEGORY_LENGTH,
    MAX_PERSONALIZATIONS,
    MAX_SUBJECT,
    MAX_TOTAL_RECIPIENTS,
    MIME_TYPE,
    FieldChecker,
    kind_of,
)
from daemon.mail.send_api.model import (
    Address,
    Attachment,
    FieldError,
    Personalization,
    SendRequest,
    SendRequestInvalid,
)

UNSUPPORTED = {
    "template_id": "templates are not supported; render the content in the application",
    "send_at": "scheduled sending is not supported; send when the mail should go out",
    "batch_id": "batches are not supported (they exist to cancel scheduled sends)",
    "asm": "unsubscribe groups are not supported",
    "sections": "substitution sections are not supported",
}
IGNORED = frozenset({"tracking_settings", "ip_pool_name"})
PERSONALIZATION_UNSUPPORTED = {
    "substitutions": "substitutions are not supported; render the content in the application",
    "dynamic_template_data": "templates are not supported; render the content in the "
                             "application",
    "send_at": "scheduled sending is not supported; send when the mail should go out",
}


def parse(body: bytes) -> SendRequest:
    """The request in `body`, or SendRequestInvalid listing every problem."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise SendRequestInvalid([FieldError(f"The request body is not valid JSON: {err}",
                                             None)]) from None
    check = FieldChecker()
    top = check.mapping(data, "(body)")
    if top is None:
        raise SendRequestInvalid(check.errors)
    request = _parse_request(check, top)
    if check.errors or request is None:
        raise SendRequestInvalid(check.errors)
    return request


_TOP_FIELDS = {"personalizations", "from", "reply_to", "reply_to_list", "subject", "content",
               "attachments", "headers", "custom_args", "categories", "mail_settings"}


def _parse_request(check: FieldChecker, top: dict[str, Any]) -> SendRequest | None:
    check.unknown(top, None, _TOP_FIELDS, UNSUPPORTED, IGNORED)
    sender = check.address(top["from"], "from") if "from" in top else None
    if "from" not in top:
        check.fail("from", "The from object must be provided for every email send.")
    subject = None
    if top.get("subject") is not None:
        subject = check.text(top["subject"], "subject", limit=MAX_SUBJECT)
    personalizations = _personalizations(check, top.get("personalizations"), subject)
    reply_to = _reply_to(check, top)
    contents = _contents(check, top.get("content"))
    attachments = tuple(a for at, item in check.items(top.get("attachments", []), "attachments")
                        if (a := _attachment(check, item, at)) is not None)
    headers = check.headers(top.get("headers", {}), "headers")
    custom_args = check.custom_args(top.get("custom_args", {}), "custom_args")
    categories = _categories(check, top.get("categories", []))
    sandbox = _mail_settings(check, top.get("mail_settings", {}))
    if sender is None or not personalizations or not contents:
        return None
    return SendRequest(sender=sender, personalizations=personalizations, subject=subject,
                       contents=contents, attachments=attachments, reply_to=reply_to,
                       headers=headers, custom_args=custom_args, categories=categories,
                       sandbox=sandbox)


def _personalizations(check: FieldChecker, value: Any, subject: str | None
                      ) -> tuple[Personalization, ...]:
    if value is None:
        check.fail("personalizations", "You must have at least one personalization.")
        return ()
    if isinstance(value, list) and not value:
        check.fail("personalizations", "You must have at least one personalization.")
        return ()
    if isinstance(value, list) and len(value) > MAX_PERSONALIZATIONS:
        check.fail("personalizations", f"The personalization block is limited to "
                   f"{MAX_PERSONALIZATIONS} personalizations per API request. You have "
                   f"provided {len(value)} personalizations.")
        return ()
    out = []
    seen: dict[str, str] = {}
    total = 0
    for at, item in check.items(value, "personalizations"):
        p = _personalization(check, item, at, subject)
        if p is None:
            continue
        for kind in ("to", "cc", "bcc"):
            for i, address in enumerate(getattr(p, kind)):
                key = address.email.lower()
                if key in seen:
                    check.fail(f"{at}.{kind}.{i}.email", f"Each email address in the "
                               f"personalization block should be unique between to, cc, and "
                               f"bcc; {address.email} is already in {seen[key]}.")
                seen.setdefault(key, f"{at}.{kind}.{i}")
        total += len(p.recipients)
        out.append(p)
    if total > MAX_TOTAL_RECIPIENTS:
        check.fail("personalizations", f"There is a limit of {MAX_TOTAL_RECIPIENTS} total "
                   f"recipients (to + cc + bcc) per request; this one has {total}.")
    return tuple(out)


def _personalization(check: FieldChecker, value: Any, at: str, subject: str | None
                     ) -> Personalization | None:
    obj = check.mapping(value, at)
    if obj is None:
        return None
    check.unknown(obj, at, {"to", "cc", "bcc", "from", "subject", "headers", "custom_args"},
                  PERSONALIZATION_UNSUPPORTED)
    if "to" not in obj:
        check.fail(f"{at}.to", "The to array is required for all personalization objects, "
                               "and must have at least one email object with a valid email "
                               "address.")
    to = check.addresses(obj.get("to", []), f"{at}.to")
    if "to" in obj and isinstance(obj["to"], list) and not obj["to"]:
        check.fail(f"{at}.to", "must have at least one email object")
    cc = check.addresses(obj.get("cc", []), f"{at}.cc")
    bcc = check.addresses(obj.get("bcc", []), f"{at}.bcc")
    sender = check.address(obj["from"], f"{at}.from") if "from" in obj else None
    own_subject = None
    if obj.get("subject") is not None:
        own_subject = check.text(obj["subject"], f"{at}.subject", limit=MAX_SUBJECT)
    elif subject is None:
        check.fail(f"{at}.subject", "The subject is required: set it at the top or in "
                                    "every personalization.")
    headers = check.headers(obj.get("headers", {}), f"{at}.headers")
    custom_args = check.custom_args(obj.get("custom_args", {}), f"{at}.custom_args")
    if not to:
        return None
    return Personalization(to=to, cc=cc, bcc=bcc, sender=sender, subject=own_subject,
                           headers=headers, custom_args=custom_args)


def _reply_to(check: FieldChecker, top: dict[str, Any]) -> tuple[Address, ...]:
    if "reply_to" in top and "reply_to_list" in top:
        check.fail("reply_to_list", "reply_to and reply_to_list cannot both be set")
        return ()
    if top.get("reply_to") is not None:
        found = check.address(top["reply_to"], "reply_to")
        return (found,) if found else ()
    if "reply_to_list" in top:
        return check.addresses(top["reply_to_list"], "reply_to_list")
    return ()


def _contents(check: FieldChecker, value: Any) -> tuple[tuple[str, str], ...]:
    if value is None or (isinstance(value, list) and not value):
        check.fail("content", "Unless a valid template_id is provided, the content "
                              "parameter is required. There must be at least one defined "
                              "content block.")
        return ()
    out: list[tuple[str, str]] = []
    for at, item in check.items(value, "content"):
        obj = check.mapping(item, at)
        if obj is None:
            continue
        check.unknown(obj, at, {"type", "value"})
        kind = check.text(obj.get("type"), f"{at}.type", limit=130)
        text = check.text(obj.get("value"), f"{at}.value", limit=10**9, one_line=False)
        if kind is None or text is None:
            continue
        kind = kind.lower()
        if not MIME_TYPE.fullmatch(kind) or not kind.startswith("text/"):
            check.fail(f"{at}.type", f"{kind!r} is not a text MIME type such as text/plain "
                                     "or text/html")
        elif any(kind == seen for seen, _ in out):
            check.fail(f"{at}.type", f"there is already a content block of type {kind}")
        else:
            out.append((kind, text))
    order = [kind for kind, _ in out]
    if "text/plain" in order and order.index("text/plain") != 0:
        check.fail("content", "If present, text/plain must be first, followed by html or "
                              "other content.")
    return tuple(out)


def _attachment(check: FieldChecker, value: Any, at: str) -> Attachment | None:
    obj = check.mapping(value, at)
    if obj is None:
        return None
    check.unknown(obj, at, {"content", "filename", "type", "disposition", "content_id"})
    filename = check.text(obj.get("filename"), f"{at}.filename", limit=255)
    data = None
    encoded = obj.get("content")
    if not isinstance(encoded, str) or not encoded:
        check.fail(f"{at}.content", "The attachment content is required: a base64 string.")
    else:
        try:
            data = base64.b64decode(encoded.replace("\r", "").replace("\n", ""),
                                    validate=True)
        except (binascii.Error, ValueError):
            check.fail(f"{at}.content", "The attachment content must be base64 encoded.")
    kind = None
    if obj.get("type") is not None:
        kind = check.text(obj["type"], f"{at}.type", limit=130)
        if kind is not None and not MIME_TYPE.fullmatch(kind):
            check.fail(f"{at}.type", f"{kind!r} is not a MIME type such as application/pdf")
            kind = None
        elif kind is not None and kind.lower().startswith(("multipart/", "message/")):
            # Composite types may not be base64-encoded (RFC 2045 6.4); readers would
            # each make something else of one.
            check.fail(f"{at}.type", f"{kind!r} cannot be an attachment's type (a "
                                     "composite type); send it as application/octet-stream")
            kind = None
    disposition = obj.get("disposition", "attachment")
    if disposition not in ("attachment", "inline"):
        check.fail(f"{at}.disposition", "must be attachment or inline")
    content_id = None
    if obj.get("content_id") is not None:
        content_id = check.text(obj["content_id"], f"{at}.content_id", limit=250)
        if content_id is not None and not CONTENT_ID.fullmatch(content_id):
            check.fail(f"{at}.content_id", "must be printable ASCII without spaces or <>")
    elif disposition == "inline":
        check.fail(f"{at}.content_id", "The content_id parameter is required if the "
                                       "disposition is set to inline.")
    if filename is None or data is None:
        return None
    guessed = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    return Attachment(content=data, filename=filename, type=(kind or guessed).lower(),
                      disposition=str(disposition), content_id=content_id)


def _categories(check: FieldChecker, value: Any) -> tuple[str, ...]:
    out: list[str] = []
    for at, item in check.items(value, "categories"):
        text = check.text(item, at, limit=MAX_CATEGORY_LENGTH)
        if text is None:
            continue
        if not text.isascii():
            check.fail(at, "A category must be ASCII.")
        elif text in out:
            check.fail(at, f"The category {text!r} is listed twice.")
        else:
            out.append(text)
    if len(out) > MAX_CATEGORIES:
        check.fail("categories", f"Too many categories: {len(out)}; at most "
                                 f"{MAX_CATEGORIES} are allowed.")
    return tuple(out)


_MAIL_SETTINGS_IGNORED = frozenset({"bypass_list_management", "bypass_spam_management",
                                    "bypass_bounce_management",
                                    "bypass_unsubscribe_management"})
_MAIL_SETTINGS_REFUSED: dict[str, str] = {
    "footer": "footers are not supported; put the footer in the content",
    "spam_check": "spam checks are not supported",
}


def _enabled(check: FieldChecker, value: Any, at: str) -> bool:
    obj = check.mapping(value, at)
    if obj is None:
        return False
    enable = obj.get("enable", False)
    if not isinstance(enable, bool):
        check.fail(f"{at}.enable", f"must be true or false, not {kind_of(enable)}")
        return False
    return enable


def _mail_settings(check: FieldChecker, value: Any) -> bool:
    """Whether sandbox mode is on (validate only, queue nothing)."""
    obj = check.mapping(value, "mail_settings")
    if obj is None:
        return False
    sandbox = False
    for key, item in obj.items():
        at = f"mail_settings.{key}"
        enabled = _enabled(check, item, at)
        if key == "sandbox_mode":
            sandbox = enabled
        elif key in _MAIL_SETTINGS_REFUSED:
            if enabled:
                check.fail(at, _MAIL_SETTINGS_REFUSED[key])
        elif key not in _MAIL_SETTINGS_IGNORED:
            check.fail(at, "is not a mail setting of the v3 mail send request")
    return sandbox


def each_message(request: SendRequest) -> Iterator[tuple[int, Personalization, Address, str]]:
    """One message per personalization: who it is from and its subject (the
    personalization's own win over the request's, as in SendGrid)."""
    for index, p in enumerate(request.personalizations):
        subject = p.subject if p.subject is not None else request.subject
        assert subject is not None  # parse() refuses a personalization without one
        yield index, p, p.sender or request.sender, subject

