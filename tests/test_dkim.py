"""DKIM signing and keys. Every signature is checked by unmodified dkimpy verifying through a
fake DNS lookup that serves the keys' own dns_value(), as a receiver would."""

from __future__ import annotations

import base64
import os
import re
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from dkim.canonicalization import Relaxed
from dkim.util import parse_tag_value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.mail.dkim import (
    DEFAULT_SIGNED_HEADERS,
    OVERSIGNED,
    DkimError,
    DkimKey,
    DkimMessageError,
    KeyRing,
    Signer,
    _relaxed_body,
    generate_key,
    load_key,
    txt_record_strings,
    write_private_key,
    zone_line,
)

# A throwaway 512-bit key: cryptography refuses to generate keys this small.
RSA_512_PEM = b"""-----BEGIN RSA PRIVATE KEY-----
MIIBOgIBAAJBALWINH+sLN2yQYUCh3Nj6mC2dQUIfnqeAYMZtjNWdy4XvshzRTFA
UHBA2+9qIDLjL4IY+0YYjHr58l2UYJ1dpAsCAwEAAQJAJKM/zUDHsVrnxFuVUOGq
jShmB8UGGeNH9Ni8oDHkTeXfnxu+9B2LY23hY2liAf5wZ+qqA2/c8HbR5U1pendV
uQIhAOs6Atm33Gp0JOQ2WcbzIwR7LzWBmd61mJ9EvO4/zN7dAiEAxZBFTBCTp7js
0vGpENFYRCRef/5AKC5S+d8BPK3K/AcCIQDpspXYZpHG9aMdVF43iaHVtuj9OMh9
el+qhKlL7vkExQIgeSLU2qbvYk/JJi5285DpBh8msmQ7AmglCIDsSUBmzdECIFqE
S/P8dYQWAMdSl1fxeSB5rCoWc98XQBoyiT936+Ti
-----END RSA PRIVATE KEY-----
"""

MESSAGE = (
    b"Received: from app1 by relay; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: Alerts <alerts@example.com>\r\n"
    b"To: Someone <someone@example.org>, Another Person <another.person@example.org>,\r\n"
    b" Third <third@example.org>\r\n"
    b"Subject: A fairly long subject line that an MTA on the way might decide to\r\n"
    b" re-fold differently\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Unsigned: not in the list\r\n"
    b"\r\n"
    b"Hello,\r\n"
    b"\r\n"
    b"this is the body.\r\n"
    b"  indented line\twith tab\r\n"
    b"\r\n"
)


def _pem_pkcs1(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _pem_pkcs8(key: object) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def rsa_key() -> DkimKey:
    return DkimKey("example.com", "rsa2024", "rsa", generate_key("rsa"))


@pytest.fixture(scope="module")
def ed_key() -> DkimKey:
    return DkimKey("example.com", "ed2024", "ed25519", generate_key("ed25519"))


@pytest.fixture(scope="module")
def rsa1024() -> rsa.RSAPrivateKey:
    key = generate_key("rsa", bits=1024)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def dns_for(*keys: DkimKey) -> Callable[..., bytes | None]:
    """A dnsfunc for dkimpy: name (bytes, with trailing dot) -> TXT bytes."""
    records = {f"{k.dns_name()}.".encode(): k.dns_value().encode() for k in keys}

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)
    return lookup


def verify_all(message: bytes, *keys: DkimKey) -> list[bool]:
    """Verify every DKIM-Signature on the message, top to bottom."""
    count = len(re.findall(rb"(?im)^dkim-signature:", message.split(b"\r\n\r\n")[0]))
    dns = dns_for(*keys)
    return [_verify_idx(message, i, dns) for i in range(count)]


def _verify_idx(message: bytes, idx: int, dns: Callable[..., bytes | None]) -> bool:
    """DKIM.verify raises on some failures (body hash mismatch); dkim.verify maps those to
    False, and so do we."""
    try:
        return bool(dkim.DKIM(message).verify(idx=idx, dnsfunc=dns))
    except dkim.DKIMException:
        return False


def sig_tags(signed: bytes, idx: int = 0) -> dict[bytes, bytes]:
    headers = dkim.rfc822_parse(signed)[0]
    sigs = [v for n, v in headers if n.lower() == b"dkim-signature"]
    return parse_tag_value(sigs[idx])


# --- signatures verify -------------------------------------------------------------

def test_rsa_signature_verifies(rsa_key: DkimKey) -> None:
    signed = Signer([rsa_key]).sign(MESSAGE) + MESSAGE
    assert dkim.verify(signed, dnsfunc=dns_for(rsa_key))
    tags = sig_tags(signed)
    assert tags[b"a"] == b"rsa-sha256"
    assert tags[b"c"] == b"relaxed/relaxed"
    assert (tags[b"d"], tags[b"s"]) == (b"example.com", b"rsa2024")
    assert b"l" not in tags and b"x" not in tags


def test_ed25519_signature_verifies(ed_key: DkimKey) -> None:
    signed = Signer([ed_key]).sign(MESSAGE) + MESSAGE
    assert dkim.verify(signed, dnsfunc=dns_for(ed_key))
    assert sig_tags(signed)[b"a"] == b"ed25519-sha256"


def test_dual_signature_ed25519_first_and_each_verifies(rsa_key: DkimKey,
                                                        ed_key: DkimKey) -> None:
    out = Signer([rsa_key, ed_key]).sign(MESSAGE)
    assert out.endswith(b"\r\n") and out.count(b"DKIM-Signature:") == 2
    signed = out + MESSAGE
    assert [sig_tags(signed, i)[b"a"] for i in (0, 1)] == [b"ed25519-sha256", b"rsa-sha256"]
    assert verify_all(signed, rsa_key, ed_key) == [True, True]
    # A verifier that only knows RSA (no Ed25519 key published) still passes the RSA one.
    assert _verify_idx(signed, 1, dns_for(rsa_key))
    assert not _verify_idx(signed, 0, dns_for(rsa_key))


def test_timestamp_and_optional_expiry(ed_key: DkimKey) -> None:
    signed = Signer([ed_key]).sign(MESSAGE, now=1_700_000_000) + MESSAGE
    assert sig_tags(signed)[b"t"] == b"1700000000"
    assert dkim.verify(signed, dnsfunc=dns_for(ed_key))
    signed = Signer([ed_key], expire_after=3600).sign(MESSAGE, now=1_700_000_000) + MESSAGE
    tags = sig_tags(signed)
    assert int(tags[b"x"]) - int(tags[b"t"]) == 3600


def test_output_lines_are_short_and_folded(rsa_key: DkimKey, ed_key: DkimKey) -> None:
    out = Signer([rsa_key, ed_key]).sign(MESSAGE)
    lines = out.split(b"\r\n")
    assert lines[-1] == b""
    assert all(len(line) <= 78 for line in lines)
    assert all(line.startswith((b"DKIM-Signature:", b" ")) for line in lines[:-1])


def test_signing_is_thread_safe(rsa_key: DkimKey, ed_key: DkimKey) -> None:
    signer = Signer([rsa_key, ed_key])
    messages = [MESSAGE.replace(b"this is the body", b"body %d" % i) for i in range(40)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(signer.sign, messages))
    for message, out in zip(messages, outs, strict=True):
        assert verify_all(out + message, rsa_key, ed_key) == [True, True]


# --- canonicalization -----------------------------------------------------------------

def rewrap(message: bytes) -> bytes:
    """What a relaxed-preserving MTA may do: re-fold headers with other whitespace, change
    header name case, add trailing whitespace to body lines."""
    head, body = message.split(b"\r\n\r\n", 1)
    head = head.replace(b"Subject: A fairly long subject line",
                        b"SUBJECT:    A fairly\r\n\tlong subject   line")
    head = head.replace(b"another.person@example.org>,\r\n Third",
                        b"another.person@example.org>,  Third")
    head = head.replace(b"\r\nto:", b"\r\nTO:").replace(b"\r\nFrom:", b"\r\nfrom:")
    head = head.replace(b"d=example.com; ", b"d=example.com;\r\n\t ")
    body = body.replace(b"\r\n", b"  \t\r\n").replace(b"is the body", b"is  the\tbody")
    return head + b"\r\n\r\n" + body + b"\r\n\r\n"


def test_relaxed_survives_rewrap(rsa_key: DkimKey, ed_key: DkimKey) -> None:
    signed = Signer([rsa_key, ed_key]).sign(MESSAGE) + MESSAGE
    wrapped = rewrap(signed)
    assert wrapped != signed and b"SUBJECT:    A fairly\r\n\tlong" in wrapped
    assert verify_all(wrapped, rsa_key, ed_key) == [True, True]


def test_simple_does_not_survive_rewrap(rsa_key: DkimKey, ed_key: DkimKey) -> None:
    signed = Signer([rsa_key, ed_key], canonicalization=("simple", "simple")).sign(MESSAGE)
    signed += MESSAGE
    assert sig_tags(signed)[b"c"] == b"simple/simple"
    assert verify_all(signed, rsa_key, ed_key) == [True, True]
    assert verify_all(rewrap(signed), rsa_key, ed_key) == [False, False]


@pytest.mark.parametrize("canon", [("relaxed", "simple"), ("simple", "relaxed")])
def test_mixed_canonicalization(rsa_key: DkimKey, canon: tuple[str, str]) -> None:
    signed = Signer([rsa_key], canonicalization=canon).sign(MESSAGE) + MESSAGE
    assert sig_tags(signed)[b"c"] == "/".join(canon).encode()
    assert dkim.verify(signed, dnsfunc=dns_for(rsa_key))


# --- tampering and header selection ---------------------------------------------------

@pytest.mark.parametrize("tamper", [
    pytest.param(lambda m: m.replace(b"this is the body", b"this is the bodY"), id="body-byte"),
    pytest.param(lambda m: m.replace(b"\r\n\r\n", b"\r\n\r\nextra line\r\n", 1), id="body-add"),
    pytest.param(lambda m: m.replace(b"A fairly long", b"A fairly short"), id="subject"),
    pytest.param(lambda m: m.replace(b"\r\nFrom:", b"\r\nFrom: Evil <ceo@example.com>\r\nFrom:"),
                 id="second-from-above"),
    pytest.param(lambda m: m.replace(b"\r\n\r\n", b"\r\nFrom: Evil <ceo@example.com>\r\n\r\n", 1),
                 id="second-from-below"),
    pytest.param(lambda m: m.replace(b"\r\n\r\n", b"\r\nSubject: other\r\n\r\n", 1),
                 id="second-subject-below"),
    pytest.param(lambda m: m.replace(b"someone@example.org", b"someone@example.net"),
                 id="to-changed"),
])
def test_tampering_breaks_both_signatures(rsa_key: DkimKey, ed_key: DkimKey,
                                          tamper: Callable[[bytes], bytes]) -> None:
    signed = Signer([rsa_key, ed_key]).sign(MESSAGE) + MESSAGE
    tampered = tamper(signed)
    assert tampered != signed
    assert verify_all(tampered, rsa_key, ed_key) == [False, False]


def test_unsigned_headers_may_be_added(rsa_key: DkimKey) -> None:
    """Trace headers, and signable headers that were absent (only From is oversigned)."""
    signed = Signer([rsa_key]).sign(MESSAGE) + MESSAGE
    signed = b"Received: from relay by mx; Mon, 1 Jan 2024 00:00:01 +0000\r\n" + signed
    signed = signed.replace(b"\r\n\r\n", b"\r\nCc: added@example.net\r\n\r\n", 1)
    assert dkim.verify(signed, dnsfunc=dns_for(rsa_key))


def test_h_lists_present_headers_and_oversigns_from(ed_key: DkimKey) -> None:
    signed = Signer([ed_key]).sign(MESSAGE) + MESSAGE
    h = [x.strip() for x in re.split(rb"\s*:\s*", sig_tags(signed)[b"h"])]
    assert h == [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version",
                 b"content-type", b"from"]
    assert h.count(b"from") == 2 and OVERSIGNED == (b"from",)
    assert b"received" not in h and b"x-unsigned" not in h and b"cc" not in h


def test_repeated_header_listed_per_instance(ed_key: DkimKey) -> None:
    message = MESSAGE.replace(b"\r\nDate:", b"\r\nTo: more@example.org\r\nDate:")
    signed = Signer([ed_key]).sign(message) + message
    h = re.split(rb"\s*:\s*", sig_tags(signed)[b"h"])
    assert h.count(b"to") == 2
    assert dkim.verify(signed, dnsfunc=dns_for(ed_key))


def test_custom_header_list(ed_key: DkimKey) -> None:
    signer = Signer([ed_key], headers=[b"From", b"Subject", b"X-Unsigned"])
    signed = signer.sign(MESSAGE) + MESSAGE
    h = re.split(rb"\s*:\s*", sig_tags(signed)[b"h"])
    assert h == [b"from", b"subject", b"x-unsigned", b"from"]
    assert dkim.verify(signed, dnsfunc=dns_for(ed_key))


def test_default_header_list_is_sane() -> None:
    for name in (b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
                 b"in-reply-to", b"references", b"mime-version", b"content-type",
                 b"content-transfer-encoding", b"list-id", b"list-unsubscribe",
                 b"list-unsubscribe-post", b"sender"):
        assert name in DEFAULT_SIGNED_HEADERS
    assert not set(DEFAULT_SIGNED_HEADERS) & {b"received", b"return-path", b"bcc",
                                                 b"dkim-signature"}
    assert all(h == h.lower() for h in DEFAULT_SIGNED_HEADERS)


# --- message forms ----------------------------------------------------------------------

def test_utf8_headers_and_8bit_body(rsa_key: DkimKey, ed_key: DkimKey) -> None:
    message = (
        "From: Jørgen Æbelø <jørgen@example.com>\r\n"
        "To: Søren <søren@eksempel.no>\r\n"
        "Subject: Blåbærsyltetøy på 🍓 og æøå — naïve café\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Hei på deg! Ærlig talt: ÆØÅ æøå 日本語 🙂\r\n"
        "  med   mellomrom\t \r\n"
    ).encode()
    signed = Signer([rsa_key, ed_key]).sign(message) + message
    assert verify_all(signed, rsa_key, ed_key) == [True, True]
    assert verify_all(rewrap(signed), rsa_key, ed_key) == [True, True]
    broken = signed.replace("æøå".encode(), "æøa".encode())
    assert verify_all(broken, rsa_key, ed_key) == [False, False]


def test_latin1_8bit_body(ed_key: DkimKey) -> None:
    message = MESSAGE.replace(b"this is the body.", b"caf\xe9 \xe6\xf8\xe5 \xff\x80")
    signed = Signer([ed_key]).sign(message) + message
    assert dkim.verify(signed, dnsfunc=dns_for(ed_key))


@pytest.mark.parametrize("message", [
    pytest.param(b"From: a@example.com\r\nSubject: no body\r\n", id="headers-only"),
    pytest.param(b"From: a@example.com\r\nSubject: no final crlf", id="no-final-crlf"),
    pytest.param(b"From: a@example.com\r\n\r\n", id="empty-body"),
    pytest.param(b"From: a@example.com\r\n\r\n\r\n\r\n\r\n", id="only-blank-lines"),
    pytest.param(b"From: a@example.com\r\n\r\nno final crlf", id="body-no-final-crlf"),
    pytest.param(b"From:a@example.com\r\nSubject:\r\nX:\t \r\n\r\n.\r\n..\r\n",
                 id="tight-and-empty-values"),
])
def test_edge_shapes_sign_and_verify(rsa_key: DkimKey, ed_key: DkimKey,
                                     message: bytes) -> None:
    for canon in (("relaxed", "relaxed"), ("simple", "simple")):
        signed = Signer([rsa_key, ed_key], canonicalization=canon).sign(message) + message
        assert verify_all(signed, rsa_key, ed_key) == [True, True], canon


@pytest.mark.parametrize(("message", "error"), [
    pytest.param(MESSAGE.replace(b"\r\n", b"\n"), "bare CR or LF at offset 60", id="all-lf"),
    pytest.param(MESSAGE.replace(b"body.\r\n", b"body.\n"), "bare CR or LF", id="one-lf"),
    pytest.param(MESSAGE.replace(b"body.\r\n", b"body.\r"), "bare CR or LF", id="bare-cr"),
    pytest.param(b"To: b@example.org\r\nSubject: x\r\n\r\nbody\r\n", "without a From",
                 id="no-from"),
    pytest.param(b"\r\nFrom: a@example.com\r\n", "no header section", id="no-headers"),
    pytest.param(b"From: a@example.com\r\nnot a header line\r\n\r\n", "malformed header",
                 id="garbage-header"),
    pytest.param(b" leading continuation\r\nFrom: a@example.com\r\n\r\n", "malformed header",
                 id="leading-continuation"),
])
def test_sign_rejects_what_it_cannot_sign_faithfully(ed_key: DkimKey, rsa_key: DkimKey,
                                                     message: bytes, error: str) -> None:
    """Bare LF is rejected, not normalized: the caller relays exactly the bytes it signs."""
    with pytest.raises(DkimMessageError, match=error):
        Signer([rsa_key, ed_key]).sign(message)


def test_sign_rejects_str(ed_key: DkimKey) -> None:
    with pytest.raises(DkimError, match="must be bytes"):
        Signer([ed_key]).sign(MESSAGE.decode())  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"headers": [b"to", b"subject"]}, "From header must be DKIM-signed"),
    ({"headers": [b"from", b"Received"]}, "received must not be DKIM-signed"),
    ({"canonicalization": ("relaxed", "loose")}, "unknown DKIM canonicalization"),
    ({"canonicalization": ("relaxed",)}, r"\(header, body\) pair"),
    ({"expire_after": 0}, "positive"),
])
def test_signer_config_errors(ed_key: DkimKey, kwargs: dict[str, object], error: str) -> None:
    with pytest.raises(DkimError, match=error):
        Signer([ed_key], **kwargs)  # type: ignore[arg-type]


def test_signer_needs_keys_and_no_duplicates(ed_key: DkimKey) -> None:
    with pytest.raises(DkimError, match="at least one key"):
        Signer([])
    with pytest.raises(DkimError, match=r"duplicate DKIM key ed2024\._domainkey\.example\.com"):
        Signer([ed_key, ed_key])


# --- hypothesis: arbitrary content signs and verifies -------------------------------------

_text = st.lists(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)
                 | st.sampled_from([" ", "  ", "\t", " \t ", "        "]),
                 max_size=30).map("".join)
_name = st.sampled_from([b"Subject", b"To", b"Cc", b"Reply-To", b"X-Custom", b"list-id",
                         b"MIME-Version", b"Comments", b"X-A-Really-Long-Header-Name"])


def _folded(value: str, folds: list[int]) -> bytes:
    """Fold a header value at some of its spaces (a continuation line starts with WSP)."""
    raw = value.encode("ascii")
    spaces = [i for i, c in enumerate(raw) if c == 0x20]
    for i in sorted({spaces[f % len(spaces)] for f in folds} if spaces else (), reverse=True):
        raw = raw[:i] + b"\r\n" + raw[i:]
    return raw


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    headers = [(b"From", draw(_text.map(lambda v: v + " <a@example.com>")))]
    headers += draw(st.lists(st.tuples(_name, _text), max_size=8))
    order = draw(st.permutations(headers))
    head = b"".join(name + b":" + _folded(value, draw(st.lists(st.integers(0, 99), max_size=3)))
                    + b"\r\n" for name, value in order)
    lines = draw(st.lists(_text | st.text(st.sampled_from("ab \t."), min_size=900,
                                          max_size=1200), max_size=12))
    body = b"".join(line.encode("ascii") + b"\r\n" for line in lines)
    return head + b"\r\n" + body


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(message=messages(), canon=st.sampled_from([("relaxed", "relaxed"),
                                                   ("simple", "simple")]))
def test_arbitrary_messages_sign_and_verify(rsa_key: DkimKey, ed_key: DkimKey,
                                            message: bytes, canon: tuple[str, str]) -> None:
    signed = Signer([rsa_key, ed_key], canonicalization=canon).sign(message) + message
    assert verify_all(signed, rsa_key, ed_key) == [True, True]


@given(st.lists(st.sampled_from([b"a", b"b.", b" ", b"  ", b"\t", b" \t", b"\r\n", b"\r\n\r\n",
                                 b"\r", b"\n", b"\xc3\xa6", b"\x0b", b"\x0c", b"\x00"]),
                max_size=60).map(b"".join))
def test_relaxed_body_matches_dkimpy(body: bytes) -> None:
    """Our fast relaxed body canonicalization is byte-identical to dkimpy's."""
    assert _relaxed_body(body) == Relaxed.canonicalize_body(body)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([b"From: a@example.com\r\n", b"To: b\r\n", b"\r\n", b" ",
                                 b"\t", b":", b"x", b"\r", b"\n", b"\xff", b"\x00",
                                 b"DKIM-Signature: v=1\r\n"]),
                max_size=25).map(b"".join))
def test_any_input_signs_and_verifies_or_is_dkim_error(ed_key: DkimKey, message: bytes) -> None:
    """Never another exception type, never a signature that does not verify."""
    try:
        out = Signer([ed_key]).sign(message)
    except DkimError:
        return
    assert verify_all(out + message, ed_key)[0] is True


# --- key loading ---------------------------------------------------------------------------

def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_load_pkcs1_rsa_as_opendkim_genkey_writes(tmp_path: Path, rsa_key: DkimKey) -> None:
    assert isinstance(rsa_key.private_key, rsa.RSAPrivateKey)
    pem = _pem_pkcs1(rsa_key.private_key)
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    key = load_key(_write(tmp_path / "mail.private", pem), domain="Example.COM.", selector="mail")
    assert (key.domain, key.selector, key.algorithm) == ("example.com", "mail", "rsa")
    assert key.key_bits == 2048 and not key.weak and not key.loose_permissions
    assert key.path == tmp_path / "mail.private"
    assert key.dns_value() == rsa_key.dns_value()
    signed = Signer([key]).sign(MESSAGE) + MESSAGE
    assert dkim.verify(signed, dnsfunc=dns_for(key))


def test_load_pkcs8_rsa_and_ed25519(tmp_path: Path, rsa_key: DkimKey, ed_key: DkimKey) -> None:
    r = load_key(_write(tmp_path / "r.pem", _pem_pkcs8(rsa_key.private_key)),
                 domain="example.com", selector="r")
    e = load_key(_write(tmp_path / "e.pem", _pem_pkcs8(ed_key.private_key)),
                 domain="example.com", selector="e")
    assert (r.algorithm, e.algorithm) == ("rsa", "ed25519")
    assert e.key_bits == 256 and not e.weak
    assert e.dns_value() == ed_key.dns_value()
    signed = Signer([r, e]).sign(MESSAGE) + MESSAGE
    assert verify_all(signed, r, e) == [True, True]


def test_load_raw_ed25519_seed_as_dknewkey_writes(tmp_path: Path, ed_key: DkimKey) -> None:
    assert isinstance(ed_key.private_key, ed25519.Ed25519PrivateKey)
    seed = ed_key.private_key.private_bytes(serialization.Encoding.Raw,
                                            serialization.PrivateFormat.Raw,
                                            serialization.NoEncryption())
    key = load_key(_write(tmp_path / "ed.key", base64.b64encode(seed) + b"\n"),
                   domain="example.com", selector="ed")
    assert key.algorithm == "ed25519" and key.dns_value() == ed_key.dns_value()


def test_load_1024_bit_rsa_is_weak(tmp_path: Path, rsa1024: rsa.RSAPrivateKey) -> None:
    key = load_key(_write(tmp_path / "k.pem", _pem_pkcs1(rsa1024)),
                   domain="example.com", selector="old")
    assert key.key_bits == 1024 and key.weak
    signed = Signer([key]).sign(MESSAGE) + MESSAGE
    assert dkim.verify(signed, dnsfunc=dns_for(key))


@pytest.mark.parametrize(("mode", "loose"), [(0o600, False), (0o400, False), (0o640, False),
                                             (0o644, True), (0o606, True)])
def test_loose_permissions(tmp_path: Path, ed_key: DkimKey, mode: int, loose: bool) -> None:
    key = load_key(_write(tmp_path / "e.pem", _pem_pkcs8(ed_key.private_key), mode),
                   domain="example.com", selector="e")
    assert key.loose_permissions is loose


@pytest.mark.parametrize(("content", "error"), [
    pytest.param(b"this is not a key\n", "not a PEM private key nor a base64", id="garbage"),
    pytest.param(b"", "not a PEM private key", id="empty"),
    pytest.param(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                 "not a usable PEM private key", id="garbled-pem"),
    pytest.param(RSA_512_PEM, "RSA key has 512 bits; DKIM needs at least 1024", id="rsa-512"),
    pytest.param(b"QUJD\n", "base64 32-byte Ed25519 seed", id="short-base64"),
])
def test_load_bad_key_names_the_file(tmp_path: Path, content: bytes, error: str) -> None:
    path = _write(tmp_path / "bad.key", content)
    with pytest.raises(DkimError, match=error) as info:
        load_key(path, domain="example.com", selector="sel")
    assert str(path) in str(info.value)
    assert "sel._domainkey.example.com" in str(info.value)


def test_load_encrypted_and_foreign_keys(tmp_path: Path) -> None:
    ecc = ec.generate_private_key(ec.SECP256R1())
    path = _write(tmp_path / "ec.pem", _pem_pkcs8(ecc))
    with pytest.raises(DkimError, match="unsupported key type"):
        load_key(path, domain="example.com", selector="s")
    enc = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    path = _write(tmp_path / "enc.pem", enc)
    with pytest.raises(DkimError, match="encrypted"):
        load_key(path, domain="example.com", selector="s")


def test_load_missing_or_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(DkimError, match=rf"{re.escape(str(missing))}\): cannot read"):
        load_key(missing, domain="example.com", selector="s")
    with pytest.raises(DkimError, match=r"cannot read: Is a directory"):
        load_key(tmp_path, domain="example.com", selector="s")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(DkimError, match=r"not a regular file"):
        load_key(fifo, domain="example.com", selector="s")  # and does not block


@pytest.mark.parametrize(("domain", "selector"), [("exa mple.com", "s"), ("example.com", ""),
                                                  ("-bad.com", "s"), ("example.com", "a;b")])
def test_key_names_are_validated(ed_key: DkimKey, domain: str, selector: str) -> None:
    with pytest.raises(DkimError, match="not a valid DNS name"):
        DkimKey(domain, selector, "ed25519", ed_key.private_key)


def test_key_algorithm_must_match(ed_key: DkimKey) -> None:
    with pytest.raises(DkimError, match="does not match"):
        DkimKey("example.com", "s", "rsa", ed_key.private_key)


def test_dns_name_and_values(rsa_key: DkimKey, ed_key: DkimKey) -> None:
    assert rsa_key.dns_name() == "rsa2024._domainkey.example.com"
    assert re.fullmatch(r"v=DKIM1; k=rsa; p=MIIBIjAN[A-Za-z0-9+/]+=*", rsa_key.dns_value())
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", ed_key.dns_value())


# --- generating and writing keys ---------------------------------------------------------

def test_generate_key_errors() -> None:
    with pytest.raises(DkimError, match="below the DKIM minimum"):
        generate_key("rsa", bits=512)
    with pytest.raises(DkimError, match="unknown DKIM key algorithm 'dsa'"):
        generate_key("dsa")  # type: ignore[arg-type]


def test_write_private_key_0600_and_no_overwrite(tmp_path: Path, ed_key: DkimKey) -> None:
    path = tmp_path / "new.pem"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        write_private_key(ed_key.private_key, path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_key(path, domain="example.com", selector="new")
    assert loaded.dns_value() == ed_key.dns_value() and not loaded.loose_permissions
    before = path.read_bytes()
    with pytest.raises(DkimError, match="already exists; refusing to overwrite"):
        write_private_key(generate_key("ed25519"), path)
    assert path.read_bytes() == before


def test_write_private_key_rsa_round_trip(tmp_path: Path, rsa_key: DkimKey) -> None:
    path = tmp_path / "rsa.pem"
    write_private_key(rsa_key.private_key, path)
    assert load_key(path, domain="example.com", selector="x").dns_value() == \
        rsa_key.dns_value()
    with pytest.raises(DkimError, match="cannot create"):
        write_private_key(rsa_key.private_key, tmp_path / "missing-dir" / "k.pem")


# --- DNS records -----------------------------------------------------------------------------

@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=2000))
def test_txt_record_strings_property(value: str) -> None:
    parts = txt_record_strings(value)
    assert "".join(parts) == value
    assert all(len(p.encode()) <= 255 for p in parts)
    assert len(parts) == max(1, -(-len(value) // 255))


@given(st.text(max_size=600))
def test_txt_record_strings_never_split_utf8(value: str) -> None:
    parts = txt_record_strings(value)
    assert "".join(parts) == value
    assert all(len(p.encode()) <= 255 for p in parts)


def test_rsa_4096_record(tmp_path: Path) -> None:
    key = DkimKey("example.com", "big", "rsa", generate_key("rsa", bits=4096))
    value = key.dns_value()
    parts = txt_record_strings(value)
    assert len(value) > 700 and len(parts) == 3
    assert [len(p) for p in parts[:2]] == [255, 255] and "".join(parts) == value
    line = zone_line(key)
    assert line.startswith('big._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; p=')
    assert line.endswith('" )')
    assert re.findall(r'"([^"]*)"', line) == parts
    signed = Signer([key]).sign(MESSAGE) + MESSAGE
    assert dkim.verify(signed, dnsfunc=dns_for(key))


def test_zone_line_ed25519(ed_key: DkimKey) -> None:
    assert zone_line(ed_key) == f'ed2024._domainkey.example.com. IN TXT ( "{ed_key.dns_value()}" )'


# --- key ring --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ring_keys(rsa_key: DkimKey, ed_key: DkimKey) -> list[DkimKey]:
    return [
        ed_key, rsa_key,  # example.com: dual
        DkimKey("Sub.Example.com", "s1", "ed25519", ed_key.private_key),
        DkimKey("example.org", "s1", "rsa", rsa_key.private_key),
    ]


@pytest.mark.parametrize(("from_domain", "expected"), [
    ("example.com", "example.com"),
    ("EXAMPLE.COM", "example.com"),
    ("example.com.", "example.com"),
    ("a.b.example.com", "example.com"),
    ("sub.example.com", "sub.example.com"),
    ("X.Sub.Example.Com", "sub.example.com"),
    ("example.org", "example.org"),
    ("mail.example.org", "example.org"),
    ("notexample.com", None),
    ("example.net", None),
    ("com", None),
    ("", None),
    ("exämple.com", None),
])
def test_keyring_domain_matching(ring_keys: list[DkimKey], from_domain: str,
                                 expected: str | None) -> None:
    signer = KeyRing(ring_keys).signer_for(from_domain)
    assert (signer.domains[0] if signer else None) == expected


def test_keyring_signs_subdomain_mail_with_parent_domain(ring_keys: list[DkimKey],
                                                         rsa_key: DkimKey,
                                                         ed_key: DkimKey) -> None:
    ring = KeyRing(ring_keys)
    assert ring.domains == ["example.com", "example.org", "sub.example.com"]
    signer = ring.signer_for("alerts.example.com")
    assert signer is not None and len(signer.keys) == 2
    message = MESSAGE.replace(b"alerts@example.com", b"cron@alerts.example.com")
    signed = signer.sign(message) + message
    assert [sig_tags(signed, i)[b"d"] for i in (0, 1)] == [b"example.com", b"example.com"]
    assert verify_all(signed, rsa_key, ed_key) == [True, True]


def test_keyring_from_signers(rsa_key: DkimKey, ed_key: DkimKey) -> None:
    ring = KeyRing.from_signers([Signer([ed_key], headers=[b"from", b"subject"])])
    assert ring.domains == ["example.com"]
    with pytest.raises(DkimError, match="exactly one domain"):
        KeyRing.from_signers([Signer([ed_key]), Signer([rsa_key])])
    assert KeyRing([]).signer_for("example.com") is None
