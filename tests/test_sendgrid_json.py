"""The v3 mail send body: each kind of bad input named by its field, and the property
that every body the parser accepts becomes a MIME message that says what the body said
and that dkimpy verifies once signed; arbitrary JSON is refused, never a crash."""

from __future__ import annotations

import base64
import email
import email.header
import email.policy
import email.utils
from collections.abc import Callable
from typing import Any

import dkim
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.mail.dkim import Signer
from daemon.mail.dkimkeys import DkimKey, generate_key
from daemon.mail.message import prepare
from daemon.mail.send_api.mime import build
from daemon.mail.send_api.request import SendRequestInvalid, each_message, parse

RECEIVED = b"Received: from api (unknown [127.0.0.1])\r\n\tby relay.test (egen) with HTTP\r\n"


def body(**extra: Any) -> dict[str, Any]:
    return {"personalizations": [{"to": [{"email": "ops@example.org"}]}],
            "from": {"email": "app@example.com"}, "subject": "Deployed",
            "content": [{"type": "text/plain", "value": "Build 42 is out.\n"}], **extra}


def errors_of(value: Any) -> dict[str | None, str]:
    with pytest.raises(SendRequestInvalid) as caught:
        parse(value if isinstance(value, bytes) else orjson.dumps(value))
    return {e.field: e.message for e in caught.value.errors}


def test_a_minimal_body_is_one_message() -> None:
    request = parse(orjson.dumps(body()))
    [(index, p, sender, subject)] = list(each_message(request))
    assert (index, sender.email, subject, p.recipients) == (
        0, "app@example.com", "Deployed", ["ops@example.org"])
    assert request.contents == (("text/plain", "Build 42 is out.\n"),)


@pytest.mark.parametrize(("value", "field", "words"), [
    (b"{", None, "not valid JSON"),
    ([], "(body)", "must be an object"),
    (body(personalizations=[]), "personalizations", "at least one personalization"),
    (body(personalizations=[{"to": []}]), "personalizations.0.to", "at least one"),
    (body(personalizations=[{"cc": [{"email": "a@example.org"}]}]), "personalizations.0.to",
     "required"),
    (body(personalizations=[{"to": [{"email": "a@example.org"}, {"email": "A@example.org"}]}]),
     "personalizations.0.to.1.email", "unique"),
    (body(personalizations=[{"to": [{"name": "No address"}]}]), "personalizations.0.to.0.email",
     "required"),
    (body(personalizations=[{"to": [{"email": "büro@example.org"}]}]),
     "personalizations.0.to.0.email", "non-ASCII"),
    (body(personalizations=[{"to": [{"email": "x@example.org"}], "substitutions": {}}]),
     "personalizations.0.substitutions", "not supported"),
    (body(personalizations=[{"to": [{"email": f"r{i}@example.org"}]} for i in range(1001)]),
     "personalizations", "limited to 1000"),
    ({**body(), "from": {"email": "app@example.com", "name": "A\nB"}}, "from.name",
     "control character"),
    ({k: v for k, v in body().items() if k != "from"}, "from", "must be provided"),
    (body(subject=""), "subject", "must not be empty"),
    (body(subject=7), "subject", "must be a string"),
    (body(content=[]), "content", "content block"),
    (body(content=[{"type": "application/pdf", "value": "x"}]), "content.0.type",
     "not a text MIME type"),
    (body(content=[{"type": "text/plain", "value": "a"}, {"type": "text/plain", "value": "b"}]),
     "content.1.type", "already"),
    (body(attachments=[{"content": "eA==", "filename": "a", "disposition": "inline"}]),
     "attachments.0.content_id", "required"),
    (body(attachments=[{"content": "eA==", "filename": "a", "disposition": "hidden"}]),
     "attachments.0.disposition", "attachment or inline"),
    (body(attachments=[{"content": "eA==", "filename": "a", "type": "pdf"}]),
     "attachments.0.type", "not a MIME type"),
    (body(headers={"Bad:Name": "x"}), "headers.Bad:Name", "not a valid header name"),
    (body(headers={"Content-Type": "text/html"}), "headers.Content-Type", "reserved"),
    (body(headers={"X-Count": 3}), "headers.X-Count", "must be a string"),
    (body(custom_args={"k": "v" * 10_001}), "custom_args.k", "at most"),
    (body(categories=[f"c{i}" for i in range(11)]), "categories", "at most 10"),
    (body(categories=["naïve"]), "categories.0", "ASCII"),
    (body(reply_to={"email": "a@example.org"}, reply_to_list=[]), "reply_to_list",
     "cannot both"),
    (body(send_at=1700000000), "send_at", "not supported"),
    (body(mail_settings={"sandbox_mode": {"enable": "yes"}}), "mail_settings.sandbox_mode.enable",
     "true or false"),
    (body(mail_settings={"nonsense": {"enable": True}}), "mail_settings.nonsense",
     "not a mail setting"),
    (body(colour="blue"), "colour", "not a field"),
    (body(subject="line\u2028break"), "subject", "U+2028"),
    (body(attachments=[{"content": "aGk=", "filename": "a.eml", "type": "multipart/mixed"}]),
     "attachments.0.type", "composite"),
    (body(personalizations=[{"to": [{"email": f"r{i}@example.org"} for i in range(1001)]}]),
     "personalizations.0.to", "at most 1000"),
])
def test_each_kind_of_bad_body_names_its_field(value: Any, field: str | None,
                                               words: str) -> None:
    errors = errors_of(value)
    assert field in errors, errors
    assert words in errors[field], errors[field]


def test_every_problem_is_reported_at_once() -> None:
    errors = errors_of({"personalizations": [{"to": [{"email": "nope"}]}],
                        "from": {"email": "also nope"}, "content": [], "template_id": "x"})
    assert {"personalizations.0.to.0.email", "from.email", "content", "template_id",
            "personalizations.0.subject"} <= set(errors)


def test_a_million_bad_entries_get_a_bounded_answer() -> None:
    bad = body(personalizations=[{"to": [{"email": "x"}] * 900} for _ in range(1)],
               attachments=[{"content": "!"}] * 900)
    with pytest.raises(SendRequestInvalid) as caught:
        parse(orjson.dumps(bad))
    assert len(caught.value.errors) == 101
    assert caught.value.errors[-1].message.startswith("more than 100 problems")


def test_ignored_settings_are_accepted_and_sandbox_is_read() -> None:
    request = parse(orjson.dumps(body(tracking_settings={"click_tracking": {"enable": True}},
                                      ip_pool_name="main",
                                      mail_settings={"sandbox_mode": {"enable": True},
                                                     "bypass_list_management": {
                                                         "enable": True}})))
    assert request.sandbox


def test_a_header_the_stdlib_cannot_write_is_named() -> None:
    request = parse(orjson.dumps(body(headers={"Date": "not a date at all"})))
    index, _, sender, subject = next(each_message(request))
    with pytest.raises(SendRequestInvalid) as caught:
        build(request, index, sender, subject)
    assert caught.value.errors[0].field == "headers.Date"


@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
                    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(
                        ["personalizations", "to", "email", "from", "content", "type",
                         "value", "subject", "attachments", "headers", "x"]), inner,
                        max_size=5), max_leaves=30))
@settings(max_examples=300, deadline=None)
def test_any_json_is_parsed_or_refused_with_field_errors(value: Any) -> None:
    try:
        parse(orjson.dumps(value))
    except SendRequestInvalid as err:
        assert err.errors and all(e.message for e in err.errors)


# -- the property: accepted bodies become messages dkimpy verifies -----------------------

_local = st.text("abcdefghijklmnopqrstuvwxyz0123456789.+_-", min_size=1, max_size=12).filter(
    lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s)
_domain = st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10),
                   min_size=1, max_size=3).map(lambda labels: ".".join([*labels, "org"]))
_printable = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
                     max_size=40)
_name = _printable.filter(lambda s: s.strip())
_text_body = st.text(st.characters(blacklist_categories=("Cs",),
                                   blacklist_characters="\x00\x0b\x0c\x1c\x1d\x1e\x1f\x7f"
                                   + "".join(chr(c) for c in range(1, 9))
                                   + "".join(chr(c) for c in range(14, 28))),
                     min_size=1, max_size=300).filter(lambda s: s.strip())


def _address(domain: st.SearchStrategy[str] = _domain) -> st.SearchStrategy[dict[str, str]]:
    return st.builds(lambda local, dom, name: {"email": f"{local}@{dom}", **name},
                     _local, domain, st.one_of(st.just({}), _name.map(lambda n: {"name": n})))


@st.composite
def bodies(draw: Callable[..., Any]) -> dict[str, Any]:
    seen: set[str] = set()

    def unique(addresses: list[dict[str, str]]) -> list[dict[str, str]]:
        out = []
        for a in addresses:
            if a["email"].lower() not in seen:
                seen.add(a["email"].lower())
                out.append(a)
        return out

    personalizations = []
    for _ in range(draw(st.integers(1, 3))):
        to = unique(draw(st.lists(_address(), min_size=1, max_size=3)))
        if not to:
            continue
        p: dict[str, Any] = {"to": to}
        cc = unique(draw(st.lists(_address(), max_size=2)))
        if cc:
            p["cc"] = cc
        bcc = unique(draw(st.lists(_address(), max_size=2)))
        if bcc:
            p["bcc"] = bcc
        if draw(st.booleans()):
            p["subject"] = draw(_name)
        if draw(st.booleans()):
            p["headers"] = {"X-Tenant": draw(_printable)}
        personalizations.append(p)
    if not personalizations:
        personalizations = [{"to": [{"email": "fallback@example.org"}]}]
    content = []
    if draw(st.booleans()):
        content.append({"type": "text/plain", "value": draw(_text_body)})
    if draw(st.booleans()) or not content:
        content.append({"type": "text/html", "value": f"<p>{draw(_text_body)}</p>"})
    out: dict[str, Any] = {
        "personalizations": personalizations,
        "from": draw(_address(st.just("example.com"))),
        "subject": draw(_name),
        "content": content,
    }
    attachments = []
    for i in range(draw(st.integers(0, 2))):
        data = draw(st.binary(min_size=1, max_size=600))   # SendGrid refuses empty files
        attachment = {"content": base64.b64encode(data).decode(),
                      "filename": draw(_name.map(lambda n: n[:50].strip() or "f")) + f".{i}"}
        if draw(st.booleans()):
            attachment.update(disposition="inline", content_id=f"part{i}")
        attachments.append(attachment)
    if attachments:
        out["attachments"] = attachments
    if draw(st.booleans()):
        out["reply_to"] = draw(_address())
    if draw(st.booleans()):
        out["headers"] = {"X-Campaign": draw(_printable), "List-Id": "<ops.example.com>"}
    return out


@pytest.fixture(scope="module")
def signing() -> tuple[Signer, Callable[..., bytes]]:
    keys = [DkimKey("example.com", "ed", "ed25519", generate_key("ed25519")),
            DkimKey("example.com", "rsa", "rsa", generate_key("rsa"))]
    records = {f"{k.dns_name()}.".encode(): k.dns_value().encode() for k in keys}

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name, b"")

    return Signer(keys), lookup


def _words(phrase: str) -> str:
    """A display name is a phrase of words: readers keep the words, not the spaces."""
    return " ".join(phrase.split())


def _mailboxes(raw: bytes, field: str) -> list[tuple[str, str]]:
    """(address, name) as RFC 2047 decodes them: whitespace between two encoded words
    is not part of the name (the stdlib's newer parser keeps it in phrases)."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    return [(address, _words(str(email.header.make_header(email.header.decode_header(name)))))
            for name, address in email.utils.getaddresses(message.get_all(field, []))]


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


@given(value=bodies())
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_every_accepted_body_becomes_a_message_dkimpy_verifies(
        signing: tuple[Signer, Callable[..., bytes]], value: dict[str, Any]) -> None:
    signer, lookup = signing
    request = parse(orjson.dumps(value))
    for index, p, sender, subject in each_message(request):
        raw = build(request, index, sender, subject)
        prepared = prepare(raw, received=RECEIVED, hostname="relay.test")
        assert prepared.from_addresses == (sender.email,)
        signed = signer.sign(prepared.data) + prepared.data
        checker = dkim.DKIM(signed)
        assert checker.verify(idx=0, dnsfunc=lookup) and checker.verify(idx=1, dnsfunc=lookup)
        assert max(signed) < 128
        parsed = email.message_from_bytes(signed, policy=email.policy.default)
        assert parsed.defects == []
        # Whitespace around an unstructured field's value does not survive RFC 5322
        # parsing in any reader; what is between the words does.
        assert parsed["Subject"].strip() == subject.strip()
        assert _mailboxes(signed, "To") == [(a.email, _words(a.name or "")) for a in p.to]
        assert _mailboxes(signed, "Cc") == [(a.email, _words(a.name or "")) for a in p.cc]
        assert _mailboxes(signed, "Reply-To") == [(a.email, _words(a.name or ""))
                                                  for a in request.reply_to]
        assert "Bcc" not in parsed
        for kind, text in request.contents:
            part = parsed.get_body((kind.partition("/")[2],))
            assert part is not None, kind
            expected = _lines(text) if text.endswith(("\n", "\r")) else _lines(text) + "\n"
            assert _lines(part.get_content()) == expected, kind
        found = {part.get_filename(): part.get_content() for part in parsed.walk()
                 if part.get_filename()}
        assert found == {a.filename: a.content for a in request.attachments}
