"""Message preparation: precise 550 5.6.0 rejections, the headers egen adds and strips,
and the promise DKIM depends on: every other byte is passed through untouched."""

from __future__ import annotations

import email.parser
import email.policy
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.mail.message import (
    MAX_FROM_LENGTH,
    MessageRejected,
    normalize_newlines,
    prepare,
    protocol_name,
    received_header,
)

NOW = 1_700_000_000.0                          # Tue, 14 Nov 2023 22:13:20 +0000
RECEIVED = b"Received: from app (unknown [10.0.0.5])\r\n\tby relay.example.com; x\r\n"
HOST = "relay.example.com"
BASIC = (b"From: App <app@example.com>\r\n"
         b"To: user@example.org\r\n"
         b"Subject: hello\r\n"
         b"Message-ID: <given@example.com>\r\n"
         b"Date: Mon, 13 Nov 2023 10:00:00 +0100\r\n"
         b"\r\n"
         b"Body line\r\n")


def run(raw: bytes, **kwargs):
    kwargs.setdefault("received", RECEIVED)
    kwargs.setdefault("hostname", HOST)
    kwargs.setdefault("now", NOW)
    return prepare(raw, **kwargs)


def rejected(raw: bytes, **kwargs) -> MessageRejected:
    with pytest.raises(MessageRejected) as info:
        run(raw, **kwargs)
    return info.value


def test_complete_message_only_gets_received():
    prepared = run(BASIC)
    assert prepared.data == RECEIVED + BASIC
    assert prepared.size == len(prepared.data)
    assert prepared.message_id == "<given@example.com>"
    assert prepared.from_addresses == ("app@example.com",)
    assert prepared.from_domain == "example.com"


LONG_SUBJECT = b"Subject: " + b"x" * 1200
REJECTIONS = [
    (b"", "Message is empty"),
    (b"\r\n\r\n", "Message is empty"),
    (b"Subject: hi\r\n\r\nbody\r\n", "no From: header"),
    (b"\r\nbody without any header\r\n", "no From: header"),
    (b"From: a@example.com\r\nTo: b@example.org\r\nFrom: c@example.com\r\n\r\nx\r\n",
     r"2 From: headers \(lines 1, 3\)"),
    (b"From:\r\n\r\nx\r\n", "From: header is empty"),
    (b"From:   \r\n \r\n\r\nx\r\n", "From: header is empty"),
    (b"From: not-an-address\r\n\r\nx\r\n", "From: header could not be parsed"),
    (b"From: <>\r\n\r\nx\r\n", "From: header could not be parsed"),
    (b"From: a@\r\n\r\nx\r\n", "From: header 'a@' could not be parsed"),
    (b"From: a@example.com (unclosed\r\n\r\nx\r\n", "end of header inside comment"),
    (b"From: Undisclosed recipients:;\r\n\r\nx\r\n", "From: header has no address"),
    (b"From: a@-example.com\r\n\r\nx\r\n", "'a@-example.com' is not valid.*'-'"),
    (b"From: a@example.com\r\n\r\nline 2\r\nli\x00ne 3\r\n", "NUL byte at line 4"),
    (b"From: a@example.com\r\nSubject: a\x00b\r\n\r\nx\r\n", "NUL byte at line 2"),
    (b"From: a@example.com\r\n" + LONG_SUBJECT + b"\r\n\r\nx\r\n",
     r"Header line 2 \(Subject:\) is 1209 octets long; the limit is 998"),
    (b"From: a@example.com\r\nX-Long: short\r\n " + b"y" * 999 + b"\r\n\r\nx\r\n",
     r"Header line 3 \(X-Long:\) is 1000 octets"),
    (b"From: a@example.com\r\nSubject: caf\xe9\r\n\r\nx\r\n",
     r"Header field Subject: \(line 2\) is not valid UTF-8"),
    (b"From: a@example.com\r\nSubject: ok\r\n fine\r\n caf\xe9\r\n\r\nx\r\n",
     r"Header field Subject: \(line 4\) is not valid UTF-8"),
    (b"From: a@example.com\r\nthis is the body, no empty line before it\r\n",
     r"Line 2 \('this is the body, no empty line before it'\) is not a header field"),
    (b"From a@example.com Mon Nov 13 10:00:00 2023\r\nFrom: a@example.com\r\n\r\nx\r\n",
     "Line 1 .* is not a header field"),
    (b": no name\r\nFrom: a@example.com\r\n\r\nx\r\n", "Line 1 .* is not a header field"),
    (b" folded\r\nFrom: a@example.com\r\n\r\nx\r\n", "Line 1 starts with white space"),
    (b"From: a@example.com\r\nSubject: a\rb\r\n\r\nx\r\n", r"Header line 2 \(Subject:\) contains "
     "a bare CR"),
    (b"From: " + b"a@example.com,\r\n " * 200 + b"b@example.com\r\n\r\nx\r\n",
     f"at most {MAX_FROM_LENGTH}"),
]


@pytest.mark.parametrize(("raw", "expected"), REJECTIONS)
def test_rejections_name_the_problem(raw, expected):
    err = rejected(raw)
    assert err.code == 550
    assert err.message.startswith("5.6.0 ")
    assert re.search(expected, err.message), err.message
    assert err.reply() == f"550 {err.message}"
    assert err.message.isascii()
    assert err.message.isprintable()


def test_header_line_limit_is_configurable():
    raw = b"From: a@example.com\r\nSubject: " + b"x" * 92 + b"\r\n\r\nx\r\n"
    assert "the limit is 100" in rejected(raw, max_header_line=100).message
    assert run(raw, max_header_line=101)


def test_mail_loop_is_554():
    raw = b"Received: from a by b; x\r\n" * 50 + b"From: a@example.com\r\n\r\nx\r\n"
    err = rejected(raw)
    assert (err.code, err.message[:6]) == (554, "5.4.6 ")
    assert "50 Received:" in err.message
    assert run(raw[len(b"Received: from a by b; x\r\n"):])


def test_long_body_lines_are_not_header_lines():
    raw = b"From: a@example.com\r\n\r\n" + b"z" * 5000 + b"\r\n"
    assert run(raw).data.endswith(b"z" * 5000 + b"\r\n")


def test_message_id_added_when_missing():
    prepared = run(b"From: a@example.com\r\nDate: Mon, 13 Nov 2023 10:00:00 +0000\r\n\r\nbody\r\n")
    assert re.fullmatch(r"<[0-9a-f]{32}@relay\.example\.com>", prepared.message_id)
    assert prepared.data == (RECEIVED + b"From: a@example.com\r\n"
                             b"Date: Mon, 13 Nov 2023 10:00:00 +0000\r\n"
                             b"Message-ID: " + prepared.message_id.encode() + b"\r\n"
                             b"\r\nbody\r\n")


def test_message_ids_are_unique():
    raw = b"From: a@example.com\r\n\r\nx\r\n"
    assert run(raw).message_id != run(raw).message_id


def test_date_added_when_missing():
    prepared = run(b"From: a@example.com\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n")
    assert prepared.data == (RECEIVED + b"From: a@example.com\r\nMessage-ID: <m@x>\r\n"
                             b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\nbody\r\n")


def test_existing_folded_message_id_is_reported_unfolded():
    prepared = run(b"From: a@example.com\r\nMessage-Id:\r\n <folded@example.com>\r\n\r\nx\r\n")
    assert prepared.message_id == "<folded@example.com>"
    assert prepared.data.count(b"Message-I") == 1


def test_received_is_prepended_and_terminated():
    prepared = run(BASIC, received=b"Received: by relay.example.com; now")
    assert prepared.data.startswith(b"Received: by relay.example.com; now\r\nFrom: App")


@pytest.mark.parametrize(("headers", "kept"), [
    (b"Bcc: hidden@example.org\r\n", b""),
    (b"BCC: hidden@example.org\r\n", b""),
    (b"bcc : hidden@example.org\r\n", b""),                      # obsolete space before ':'
    (b"Bcc:\r\n", b""),
    (b"Bcc: one@example.org,\r\n two@example.org,\r\n\tthree@example.org\r\n", b""),
    (b"Resent-Bcc: hidden@example.org\r\n", b""),
    (b"Bcc: a@example.org\r\nX-Keep: 1\r\nBcc: b@example.org\r\n folded\r\n", b"X-Keep: 1\r\n"),
    (b"X-Bcc: visible\r\nBcc-Note: visible\r\n", b"X-Bcc: visible\r\nBcc-Note: visible\r\n"),
])
def test_bcc_is_stripped_with_its_continuation_lines(headers, kept):
    head = b"From: a@example.com\r\nMessage-ID: <m@x>\r\nDate: d\r\n"
    prepared = run(head + headers + b"\r\n Bcc: in the body stays\r\n")
    assert prepared.data == RECEIVED + head + kept + b"\r\n Bcc: in the body stays\r\n"


def test_bcc_as_the_first_and_last_header():
    raw = (b"Bcc: first@example.org\r\nFrom: a@example.com\r\nMessage-ID: <m@x>\r\nDate: d\r\n"
           b"Bcc: last@example.org\r\n\r\nx\r\n")
    assert run(raw).data == (RECEIVED + b"From: a@example.com\r\nMessage-ID: <m@x>\r\nDate: d\r\n"
                             b"\r\nx\r\n")


def test_headers_only_message():
    prepared = run(b"From: a@example.com\r\nSubject: just headers")
    assert prepared.data.startswith(RECEIVED + b"From: a@example.com\r\nSubject: just headers\r\n"
                                    b"Message-ID: <")
    assert prepared.data.endswith(b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n")
    assert b"\r\n\r\n" not in prepared.data


def test_empty_body():
    raw = b"From: a@example.com\r\nMessage-ID: <m@x>\r\nDate: d\r\n\r\n"
    assert run(raw).data == RECEIVED + raw


def test_eight_bit_body_is_untouched():
    body = bytes(range(1, 256)).replace(b"\n", b"").replace(b"\r", b"") + b"\r\n" + \
        "Grüße, ünïcödé\r\n".encode("latin-1") + "and UTF-8: 日本語\r\n".encode()
    raw = BASIC.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body
    prepared = run(raw)
    assert prepared.data == RECEIVED + raw
    assert prepared.data.endswith(body)


def test_utf8_headers_are_allowed():
    raw = ("From: Jörg <jörg@bücher.de>\r\nSubject: Grüße\r\nMessage-ID: <m@x>\r\nDate: d\r\n"
           "\r\nx\r\n").encode()
    prepared = run(raw)
    assert prepared.data == RECEIVED + raw
    assert prepared.from_addresses == ("jörg@bücher.de",)
    assert prepared.from_domain == "xn--bcher-kva.de"


def test_lf_only_message_is_normalized_to_crlf():
    raw = BASIC.replace(b"\r\n", b"\n")
    assert run(raw).data == RECEIVED + BASIC


def test_bare_cr_in_the_body_is_kept():
    raw = BASIC + b"a\rb\r\n"
    assert run(raw).data == RECEIVED + raw


def test_missing_final_newline_is_added():
    assert run(BASIC[:-2]).data == RECEIVED + BASIC


def test_lone_dot_after_bare_lf_becomes_a_crlf_line():
    # aiosmtpd does not end DATA at "\n.\n" (SMTP smuggling); the dot then becomes a line of
    # its own here, which the delivery side dot-stuffs like any other.
    raw = BASIC + b"before\n.\nafter\r\n"
    assert run(raw).data.endswith(b"before\r\n.\r\nafter\r\n")


def test_from_domain_is_the_first_address_lowercased():
    raw = b"From: A <a@Mail.EXAMPLE.com>, b@example.org\r\nMessage-ID: <m@x>\r\nDate: d\r\n\r\n"
    prepared = run(raw)
    assert prepared.from_addresses == ("a@Mail.EXAMPLE.com", "b@example.org")
    assert prepared.from_domain == "mail.example.com"


@pytest.mark.parametrize(("value", "addresses"), [
    (b"John Q. Public <jqp@example.com>", ("jqp@example.com",)),
    (b"=?utf-8?q?J=C3=B6rg?= <j@example.com>", ("j@example.com",)),
    (b"\"Doe, John\" <john@example.com>", ("john@example.com",)),
    (b"john@example.com (John Doe)", ("john@example.com",)),
    (b"Team: a@example.com, b@example.com;", ("a@example.com", "b@example.com")),
    (b"\"with space\"@example.com", ("\"with space\"@example.com",)),
    (b"Folded\r\n <folded@example.com>", ("folded@example.com",)),
])
def test_from_header_forms(value, addresses):
    assert run(b"From: " + value + b"\r\n\r\nx\r\n").from_addresses == addresses


def test_rejection_quotes_client_bytes_as_ascii():
    err = rejected("From: jörg@-bücher.de\r\n\r\nx\r\n".encode())
    assert err.message.isascii()
    assert "j\\xf6rg@-b\\xfccher.de" in err.message


def test_prepared_message_repr_leaves_out_the_data():
    assert "Body line" not in repr(run(BASIC))


# --- properties ---------------------------------------------------------------------------

_atom = st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){0,2}", fullmatch=True)
_domain = st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,2}\.[a-z]{2,6}", fullmatch=True)
_names = st.sampled_from(["Subject", "To", "Cc", "Reply-To", "Bcc", "Resent-Bcc", "bcc",
                          "Message-ID", "Date", "Received", "Content-Type", "MIME-Version",
                          "X-Mailer", "List-Unsubscribe", "DKIM-Signature"]) | \
    st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True)
_value_text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=60)
_newline = st.sampled_from([b"\r\n", b"\n"])


@st.composite
def _field(draw: st.DrawFn, name: st.SearchStrategy[str]) -> tuple[str, bytes]:
    """One header field as raw lines (randomly folded, CRLF or LF), and its name."""
    field_name = draw(name)
    segments = draw(st.lists(_value_text, min_size=1, max_size=3))
    raw = field_name.encode() + b":"
    for i, segment in enumerate(segments):
        if i:
            raw += draw(_newline) + draw(st.sampled_from([b" ", b"\t"]))
        raw += b" " + segment.encode()
    return field_name, raw + draw(_newline)


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, bytes, bytes, set[str]]:
    """(raw message, its header section minus Bcc, its tail, names present) -- unnormalized."""
    local, domain = draw(_atom), draw(_domain)
    display = draw(st.sampled_from(["", "App ", "\"Team, Ops\" ", "Jörg "]))
    from_field = f"From: {display}<{local}@{domain}>".encode() + draw(_newline)
    fields = draw(st.lists(_field(_names), max_size=12))
    position = draw(st.integers(0, len(fields)))
    fields.insert(position, ("From", from_field))
    kept = b"".join(raw for name, raw in fields if name.lower() not in ("bcc", "resent-bcc"))
    header = b"".join(raw for _, raw in fields)
    headers_only = draw(st.booleans())
    body = b"" if headers_only else draw(_newline) + draw(st.binary(max_size=300)).replace(
        b"\0", b"@")
    return header + body, kept, body, {name.lower() for name, _ in fields}


def _expected_normalization(raw: bytes) -> bytes:
    """An independent statement of the rule: LF not after CR -> CRLF; end with CRLF."""
    out = bytearray()
    for i, byte in enumerate(raw):
        if byte == 0x0A and (i == 0 or raw[i - 1] != 0x0D):
            out += b"\r"
        out.append(byte)
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return bytes(out)


@settings(max_examples=200, deadline=None)
@given(messages())
def test_output_is_input_plus_added_headers(message):
    raw, kept, body, names = message
    prepared = run(raw)
    assert prepared.data.startswith(RECEIVED)
    rest = prepared.data[len(RECEIVED):]
    header = _expected_normalization(kept)
    tail = _expected_normalization(body)          # the empty line and the body, if any
    assert rest.startswith(header)
    assert rest.endswith(tail)                    # the body, byte for byte
    added = rest[len(header):len(rest) - len(tail)]
    pattern = b"" if "message-id" in names else \
        rb"Message-ID: <[0-9a-f]{32}@relay\.example\.com>\r\n"
    pattern += b"" if "date" in names else rb"Date: Tue, 14 Nov 2023 22:13:20 \+0000\r\n"
    assert re.fullmatch(pattern, added), added
    assert prepared.size == len(prepared.data)


@settings(max_examples=100, deadline=None)
@given(messages())
def test_output_parses_with_the_same_headers(message):
    raw, _, _, _ = message
    prepared = run(raw)
    parsed = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
        prepared.data, headersonly=True)
    assert parsed["Message-ID"] is not None
    assert parsed["Date"] is not None
    assert parsed["Bcc"] is None
    assert parsed["Resent-Bcc"] is None
    assert len(parsed.get_all("From")) == 1


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_only_ever_raise_message_rejected(raw):
    try:
        prepared = run(raw)
    except MessageRejected as err:
        assert err.code in (550, 554)
        assert err.message.isascii()
        assert err.message.isprintable()
    else:
        assert prepared.data.startswith(RECEIVED)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=100))
def test_arbitrary_from_values_only_ever_raise_message_rejected(value, rest):
    try:
        run(b"From: " + value + b"\r\n" + rest)
    except MessageRejected as err:
        assert err.message.isascii()
        assert err.message.isprintable()


@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from('()<>@,;:\\"[].ab \t'), max_size=MAX_FROM_LENGTH))
def test_hostile_from_syntax_only_ever_raises_message_rejected(value):
    try:
        run(b"From: " + value.encode() + b"\r\n\r\nx\r\n")
    except MessageRejected as err:
        assert err.code == 550


def test_normalize_newlines_returns_crlf_input_as_is():
    data = b"a\r\nb\r\n"
    assert normalize_newlines(data) is data
    assert normalize_newlines(b"a\nb") == b"a\r\nb\r\n"
    assert normalize_newlines(b"") == b""


# --- Received: ----------------------------------------------------------------------------

def received(**kwargs) -> bytes:
    args = {"helo": "app1.internal", "client_ip": "10.0.0.5", "client_rdns": "app1.internal",
            "hostname": HOST, "queue_id": "B7K2XQ9MZP4RTV", "protocol": "ESMTPSA",
            "tls": "TLSv1.3 TLS_AES_256_GCM_SHA384", "auth_user": "dev",
            "recipient": "user@example.org", "now": NOW}
    args.update(kwargs)
    return received_header(**args)


def test_received_header_layout():
    assert received() == (
        b"Received: from app1.internal (app1.internal [10.0.0.5])\r\n"
        b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n"
        b"\t(Authenticated sender: dev)\r\n"
        b"\tby relay.example.com (egen) with ESMTPSA id B7K2XQ9MZP4RTV\r\n"
        b"\tfor <user@example.org>; Tue, 14 Nov 2023 22:13:20 +0000\r\n")


def test_received_header_plain_trusted_client_without_recipient():
    assert received(client_rdns=None, protocol="ESMTP", tls=None, auth_user=None,
                    recipient=None) == (
        b"Received: from app1.internal (unknown [10.0.0.5])\r\n"
        b"\tby relay.example.com (egen) with ESMTP id B7K2XQ9MZP4RTV;"
        b" Tue, 14 Nov 2023 22:13:20 +0000\r\n")


@pytest.mark.parametrize(("client_ip", "literal"), [
    ("2001:db8::1", b"[IPv6:2001:db8::1]"),
    ("::ffff:192.0.2.7", b"[192.0.2.7]"),
    ("fe80::1%eth0", b"[IPv6:fe80::1]"),
    ("/run/egen.sock", b"[unknown]"),
])
def test_received_client_literal(client_ip, literal):
    assert b" " + literal + b")" in received(client_ip=client_ip)


def test_received_neutralizes_client_text():
    header = received(helo="evil\r\nBcc: x@y (a) ;", client_rdns="x" * 1000,
                      auth_user="dev\r\nX-Injected: 1", recipient="a\r\nb@example.org")
    lines = header.split(b"\r\n")
    assert lines[-1] == b""
    assert all(line.startswith((b"Received:", b"\t")) for line in lines[:-1])
    assert all(len(line) <= 998 for line in lines)
    assert b"from evil??Bcc:?x@y??a??? (" in header


def test_received_header_parses_as_one_field_with_a_date():
    parsed = email.parser.BytesParser(policy=email.policy.SMTP).parsebytes(
        received() + b"From: a@example.com\r\n\r\n", headersonly=True)
    value = str(parsed["Received"])
    assert value.endswith("; Tue, 14 Nov 2023 22:13:20 +0000")
    assert "password" not in value.lower()


def test_received_header_accepts_utf8_user_and_recipient():
    header = received(auth_user="jörg", recipient="jörg@bücher.de", protocol="UTF8SMTPSA")
    assert "(Authenticated sender: jörg)".encode() in header
    assert "for <jörg@bücher.de>;".encode() in header


def test_received_rejects_unknown_protocols():
    with pytest.raises(ValueError, match="protocol"):
        received(protocol="FTP")
    # The send API's mail says how it came (RFC 3848 has no name for it).
    assert b"with HTTPS" in received(protocol="HTTPS")


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"esmtp": False, "tls": False, "auth": False}, "SMTP"),
    ({"esmtp": True, "tls": False, "auth": False}, "ESMTP"),
    ({"esmtp": True, "tls": True, "auth": False}, "ESMTPS"),
    ({"esmtp": True, "tls": False, "auth": True}, "ESMTPA"),
    ({"esmtp": True, "tls": True, "auth": True}, "ESMTPSA"),
    ({"esmtp": True, "tls": True, "auth": True, "smtputf8": True}, "UTF8SMTPSA"),
])
def test_protocol_names_follow_rfc_3848(kwargs, name):
    assert protocol_name(**kwargs) == name
    received(protocol=name)
