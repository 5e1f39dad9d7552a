"""DSNs read back with the stdlib parser, RFC 3461 NOTIFY rules and xtext decoding."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage, Message

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.mail.delivery.bounce import RecipientStatus, build_dsn
from daemon.mail.dsn_params import parse_envid, parse_notify, parse_orcpt, should_notify

T0 = 1_700_000_000.0
NOW = T0 + 3600
BODY_MARKER = "body-marker-7f3a"
ORIGINAL = (
    "Received: from app1 by relay.example.com\r\n"
    "DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; h=from:to:subject;\r\n"
    " b=AAAA\r\n"
    "From: App <app@example.com>\r\n"
    "To: bob@example.org\r\n"
    "Subject: Your invoice\r\n"
    "Message-ID: <inv-1@example.com>\r\n"
    "\r\n"
    f"Hello Bob,\r\n{BODY_MARKER}\r\n"
).encode("ascii")
UNKNOWN_USER = "550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown"


def failed(recipient="bob@example.org", **kwargs):
    fields = {"original_recipient": None, "action": "failed", "status": "5.1.1",
              "remote_mta": "mx1.example.org", "diagnostic": UNKNOWN_USER,
              "last_attempt": NOW, "will_retry_until": None}
    return RecipientStatus(recipient=recipient, **{**fields, **kwargs})


def delayed(recipient="carol@example.org", **kwargs):
    fields = {"original_recipient": None, "action": "delayed", "status": "4.4.1",
              "remote_mta": None, "diagnostic": "connect to mx.example.org: timed out",
              "last_attempt": NOW, "will_retry_until": T0 + 5 * 86400}
    return RecipientStatus(recipient=recipient, **{**fields, **kwargs})


def delivered(recipient="dave@example.org", **kwargs):
    fields = {"original_recipient": None, "action": "delivered", "status": "2.0.0",
              "remote_mta": "mx2.example.org", "diagnostic": "250 2.0.0 Ok: queued as 123",
              "last_attempt": NOW, "will_retry_until": None}
    return RecipientStatus(recipient=recipient, **{**fields, **kwargs})


def build(recipients=None, **kwargs):
    args = {"original": ORIGINAL, "envelope_sender": "bounces@example.com",
            "recipients": [failed()] if recipients is None else recipients,
            "reporting_mta": "relay.example.com",
            "postmaster": "postmaster@relay.example.com", "queue_id": "B7K2M9Q4X8Z1T5",
            "arrival": T0, "now": NOW, "message_id_domain": "relay.example.com"}
    return build_dsn(**{**args, **kwargs})


def parse(dsn: bytes) -> EmailMessage:
    msg = email.message_from_bytes(dsn, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects
    return msg


def parts(msg: EmailMessage) -> list[Message]:
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    payload = msg.get_payload()
    assert isinstance(payload, list)
    assert len(payload) == 3
    return payload


def status_blocks(msg: EmailMessage) -> list[Message]:
    report = parts(msg)[1]
    assert report.get_content_type() == "message/delivery-status"
    blocks = report.get_payload()
    assert isinstance(blocks, list)
    return blocks


def unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]", " ", str(value))


def assert_wire_format(dsn: bytes) -> None:
    assert b"\n" not in dsn.replace(b"\r\n", b"")
    assert b"\r" not in dsn.replace(b"\r\n", b"")
    for line in dsn.split(b"\r\n"):
        assert len(line) <= 998


# --- the report ---------------------------------------------------------------------------


def test_failure_report_reads_back():
    dsn = build([failed(original_recipient="rfc822;Bob@example.org")], envid="inv-1 batch")
    assert dsn.isascii()
    assert_wire_format(dsn)
    msg = parse(dsn)
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["From"].addresses[0].addr_spec == "postmaster@relay.example.com"
    assert msg["From"].addresses[0].display_name == "Mail Delivery System"
    assert msg["To"] == "bounces@example.com"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Date"].datetime.timestamp() == NOW
    assert re.fullmatch(r"<[^<>@]+@relay\.example\.com>", msg["Message-ID"])

    text, _, original = parts(msg)
    assert text.get_content_type() == "text/plain"
    explanation = " ".join(text.get_content().split())     # unwrapped
    assert "could not be delivered" in explanation
    assert "<bob@example.org>" in explanation
    assert "mx1.example.org said:" in explanation
    assert "Recipient address rejected: User unknown" in explanation
    assert "Check the address for typos" in explanation
    assert "postmaster@relay.example.com" in explanation

    per_message, per_recipient = status_blocks(msg)
    assert per_message["Reporting-MTA"] == "dns;relay.example.com"
    assert per_message["X-Egen-Queue-ID"] == "B7K2M9Q4X8Z1T5"
    assert per_message["Original-Envelope-Id"] == "inv-1 batch"
    assert per_message["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert per_recipient["Original-Recipient"] == "rfc822;Bob@example.org"
    assert per_recipient["Final-Recipient"] == "rfc822;bob@example.org"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns;mx1.example.org"
    assert unfold(per_recipient["Diagnostic-Code"]) == "smtp;" + UNKNOWN_USER
    assert per_recipient["Last-Attempt-Date"] == "Tue, 14 Nov 2023 23:13:20 +0000"
    assert per_recipient["Will-Retry-Until"] is None

    assert original.get_content_type() == "text/rfc822-headers"
    headers = original.get_content()
    assert "Subject: Your invoice" in headers
    assert "Message-ID: <inv-1@example.com>" in headers
    assert " b=AAAA" in headers                     # folded lines kept as they were
    assert BODY_MARKER not in headers
    assert BODY_MARKER.encode() not in dsn


def test_optional_fields_are_left_out():
    dsn = build([failed(remote_mta=None, diagnostic=None, last_attempt=None)])
    per_message, per_recipient = status_blocks(parse(dsn))
    assert "Original-Envelope-Id" not in per_message
    for name in ("Original-Recipient", "Remote-MTA", "Diagnostic-Code", "Last-Attempt-Date"):
        assert name not in per_recipient
    assert per_recipient["Final-Recipient"] == "rfc822;bob@example.org"


@pytest.mark.parametrize("ret", [None, "HDRS"])
def test_headers_only_by_default_and_with_hdrs(ret):
    dsn = build(ret=ret)
    original = parts(parse(dsn))[2]
    assert original.get_content_type() == "text/rfc822-headers"
    assert "From: App <app@example.com>" in original.get_content()
    assert BODY_MARKER.encode() not in dsn


def test_full_message_with_ret_full():
    dsn = build(ret="FULL")
    assert_wire_format(dsn)
    text, _, original = parts(parse(dsn))
    assert original.get_content_type() == "message/rfc822"
    inner = original.get_payload(0)
    assert inner["Subject"] == "Your invoice"
    assert BODY_MARKER in inner.get_content()
    assert "Your message is attached." in text.get_content()
    assert ORIGINAL in dsn                           # embedded byte for byte


def test_full_falls_back_to_headers_when_too_large():
    dsn = build(ret="FULL", returned_size_limit=100)
    text, _, original = parts(parse(dsn))
    assert original.get_content_type() == "text/rfc822-headers"
    assert "too large or malformed" in text.get_content()
    assert BODY_MARKER.encode() not in dsn


def test_full_falls_back_to_headers_for_overlong_lines():
    dsn = build(ret="FULL", original=ORIGINAL + b"x" * 2000 + b"\r\n")
    assert_wire_format(dsn)
    assert parts(parse(dsn))[2].get_content_type() == "text/rfc822-headers"


def test_bare_lf_original_becomes_crlf():
    dsn = build(ret="FULL", original=ORIGINAL.replace(b"\r\n", b"\n"))
    assert_wire_format(dsn)
    assert ORIGINAL in dsn


@pytest.mark.parametrize(("recipients", "subject"), [
    ([failed()], "Undelivered Mail Returned to Sender"),
    ([failed(status="4.4.7", diagnostic=None)], "Undelivered Mail Returned to Sender"),
    ([delayed()], "Delayed Mail (still being retried)"),
    ([delivered()], "Successful Mail Delivery Report"),
    ([delivered(action="relayed")], "Successful Mail Delivery Report"),
    ([delivered(action="expanded")], "Successful Mail Delivery Report"),
    ([delivered(), delayed()], "Delayed Mail (still being retried)"),
    ([delayed(), failed(), delivered()], "Undelivered Mail Returned to Sender"),
])
def test_subject_names_the_worst_outcome(recipients, subject):
    msg = parse(build(recipients))
    assert msg["Subject"] == subject
    blocks = status_blocks(msg)[1:]
    assert [b["Action"] for b in blocks] == [r.action for r in recipients]
    assert [b["Status"] for b in blocks] == [r.status for r in recipients]
    assert [b["Final-Recipient"] for b in blocks] == [
        f"rfc822;{r.recipient}" for r in recipients]


def test_delay_report_says_until_when():
    msg = parse(build([delayed()]))
    text = parts(msg)[0].get_content()
    assert "This is only a warning" in text
    assert "keep trying until Sun, 19 Nov 2023 22:13:20 +0000" in text
    assert "you do not need to send the message again" in text
    block = status_blocks(msg)[1]
    assert block["Will-Retry-Until"] == "Sun, 19 Nov 2023 22:13:20 +0000"
    assert block["Diagnostic-Code"] == "X-Egen;connect to mx.example.org: timed out"
    assert parts(msg)[2]["Content-Description"] == "Delayed Message Headers"


def test_expiry_report_says_it_gave_up():
    msg = parse(build([failed(status="4.4.7", diagnostic="451 4.3.0 try later")],
                      now=T0 + 5 * 86400))
    text = " ".join(parts(msg)[0].get_content().split())
    assert "Gave up after trying for 5 days" in text
    assert "send the message again later" in text
    assert status_blocks(msg)[1]["Status"] == "4.4.7"


def test_success_report():
    msg = parse(build([delivered()]))
    text = parts(msg)[0].get_content()
    assert "NOTIFY=SUCCESS" in text
    block = status_blocks(msg)[1]
    assert block["Action"] == "delivered"
    assert block["Diagnostic-Code"] == "smtp;250 2.0.0 Ok: queued as 123"
    assert "Will-Retry-Until" not in block


def test_will_retry_until_only_for_delays():
    block = status_blocks(parse(build([failed(will_retry_until=T0 + 86400)])))[1]
    assert "Will-Retry-Until" not in block


@pytest.mark.parametrize("diagnostic", [
    "550 5.7.1 " + " ".join(["word"] * 1000),          # 5,000 characters with spaces
    "550 5.7.1 " + "x" * 4990,                         # and one without
    "550-5.7.1 first line\r\n550-5.7.1 second\r\n550 5.7.1 " + "y" * 4950,
])
def test_long_diagnostic_keeps_lines_short(diagnostic):
    assert len(diagnostic) >= 5000
    dsn = build([failed(diagnostic=diagnostic)])
    assert_wire_format(dsn)
    msg = parse(dsn)
    code = unfold(status_blocks(msg)[1]["Diagnostic-Code"])
    assert code.startswith("smtp;550")
    # Folding adds at most a space where a long run had to be split.
    assert code.replace(" ", "")[5:] == "".join(diagnostic.split())
    assert all(len(line) <= 78 for line in parts(msg)[0].get_content().splitlines())


def test_remote_reply_cannot_inject_fields():
    dsn = build([failed(diagnostic="550 no\r\nAction: delivered\r\n\r\nStatus: 2.0.0",
                        remote_mta="mx\r\nX-Evil: 1")])
    blocks = status_blocks(parse(dsn))
    assert len(blocks) == 2
    assert blocks[1].get_all("Action") == ["failed"]
    assert blocks[1].get_all("Status") == ["5.1.1"]
    assert "X-Evil" not in blocks[1]


def test_several_recipients_in_order():
    recipients = [failed(f"user{i}@example.org") for i in range(5)]
    blocks = status_blocks(parse(build(recipients)))
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        f"rfc822;user{i}@example.org" for i in range(5)]


def test_message_id_is_stable_for_the_same_report():
    first, second = parse(build()), parse(build())
    assert first["Message-ID"] == second["Message-ID"]
    assert parse(build(now=NOW + 1))["Message-ID"] != first["Message-ID"]
    assert parse(build([delayed()]))["Message-ID"] != first["Message-ID"]


# --- 8-bit and internationalized mail ------------------------------------------------------

UTF8_ORIGINAL = ("From: Jörg <jörg@example.com>\r\nTo: bob@example.org\r\n"
                 "Subject: Grüße\r\n\r\nHallo Bob, schöne Grüße.\r\n").encode()


def test_utf8_headers_become_message_global_headers():
    dsn = build(original=UTF8_ORIGINAL)
    assert_wire_format(dsn)
    original = parts(parse(dsn))[2]
    assert original.get_content_type() == "message/global-headers"
    assert original["Content-Transfer-Encoding"] == "8bit"
    assert "Subject: Grüße".encode() in dsn
    assert "schöne".encode() not in dsn


def test_utf8_message_is_returned_as_message_global():
    dsn = build(original=UTF8_ORIGINAL, ret="FULL")
    assert_wire_format(dsn)
    msg = parse(dsn)
    assert msg["Content-Transfer-Encoding"] == "8bit"
    assert parts(msg)[2].get_content_type() == "message/global"
    assert UTF8_ORIGINAL in dsn


def test_8bit_body_with_ascii_headers_is_message_rfc822_8bit():
    original = ORIGINAL + "Grüße\r\n".encode()
    dsn = build(original=original, ret="FULL")
    part = parts(parse(dsn))[2]
    assert part.get_content_type() == "message/rfc822"
    assert part["Content-Transfer-Encoding"] == "8bit"
    assert original in dsn
    # Headers only: nothing 8-bit is left, so the whole DSN is 7-bit.
    assert build(original=original).isascii()


def test_utf8_recipient_uses_the_utf8_address_type():
    dsn = build([failed("jörg+tag@bücher.example")])
    assert dsn.isascii()                                 # the text part is quoted-printable
    msg = parse(dsn)
    block = status_blocks(msg)[1]
    assert block["Final-Recipient"] == r"utf-8;j\x{F6}rg\x{2B}tag@b\x{FC}cher.example"
    assert "<jörg+tag@bücher.example>" in parts(msg)[0].get_content()


def test_utf8_envelope_sender():
    dsn = build(envelope_sender="jörg@example.com")
    assert_wire_format(dsn)
    msg = parse(dsn)
    assert msg["To"] == "jörg@example.com"
    assert status_blocks(msg)[0]["X-Egen-Sender"] == r"utf-8;j\x{F6}rg@example.com"


def test_non_ascii_diagnostic_stays_7bit_in_the_report():
    dsn = build([failed(diagnostic="550 5.1.1 Benutzer unbekannt: jörg")])
    assert dsn.isascii()
    msg = parse(dsn)
    assert status_blocks(msg)[1]["Diagnostic-Code"] == (
        r"smtp;550 5.1.1 Benutzer unbekannt: j\x{F6}rg")
    assert "unbekannt: jörg" in parts(msg)[0].get_content()


# --- refusals ------------------------------------------------------------------------------


def test_never_bounce_the_null_sender():
    with pytest.raises(ValueError, match="null sender"):
        build(envelope_sender="")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"recipients": []}, "at least one recipient"),
    ({"ret": "BODY"}, "ret must be"),
    ({"message_id_domain": "bad domain"}, "message_id_domain"),
    ({"envelope_sender": "no-at-sign"}, "envelope_sender"),
    ({"envelope_sender": "a@b\r\nBcc: x@y"}, "envelope_sender"),
    ({"postmaster": "postmaster"}, "postmaster"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(**kwargs)


@pytest.mark.parametrize(("action", "status"), [
    ("failed", "2.0.0"), ("delayed", "5.1.1"), ("delivered", "4.0.0"),
    ("bounced", "5.0.0"), ("failed", "5.1"), ("failed", "6.0.0"), ("failed", "5.1.1 "),
    ("failed", "5.\u0661.1"),
])
def test_recipient_status_is_checked(action, status):
    with pytest.raises(ValueError):
        failed(action=action, status=status)


# --- hypothesis: any remote reply, any address ---------------------------------------------


@given(diagnostic=st.text(max_size=6000), remote=st.one_of(st.none(), st.text(max_size=300)),
       recipient=st.text(min_size=1, max_size=100), ret=st.sampled_from([None, "HDRS", "FULL"]))
def test_any_reply_makes_a_well_formed_dsn(diagnostic, remote, recipient, ret):
    dsn = build([failed(recipient, diagnostic=diagnostic, remote_mta=remote), delayed()],
                ret=ret)
    assert_wire_format(dsn)
    assert dsn.isascii()
    blocks = status_blocks(parse(dsn))
    assert [b["Action"] for b in blocks[1:]] == ["failed", "delayed"]
    assert len(blocks[1].get_all("Final-Recipient")) == 1


# --- RFC 3461 -------------------------------------------------------------------------------

NEVER, SUCCESS, FAILURE, DELAY = ("NEVER",), ("SUCCESS",), ("FAILURE",), ("DELAY",)


@pytest.mark.parametrize(("sender", "notify", "action", "expected"), [
    # the null sender never gets one, whatever it asked for
    ("", None, "failed", False),
    ("", ("SUCCESS", "FAILURE", "DELAY"), "failed", False),
    ("", ("SUCCESS",), "delivered", False),
    # no NOTIFY: failures and delays, never success (RFC 3461 default)
    ("a@x.org", None, "failed", True),
    ("a@x.org", None, "expired", True),
    ("a@x.org", None, "delayed", True),
    ("a@x.org", None, "delivered", False),
    ("a@x.org", None, "relayed", False),
    ("a@x.org", None, "expanded", False),
    # NOTIFY=NEVER
    ("a@x.org", NEVER, "failed", False),
    ("a@x.org", NEVER, "expired", False),
    ("a@x.org", NEVER, "delayed", False),
    ("a@x.org", NEVER, "delivered", False),
    # exactly the listed conditions
    ("a@x.org", FAILURE, "failed", True),
    ("a@x.org", FAILURE, "expired", True),
    ("a@x.org", FAILURE, "delayed", False),
    ("a@x.org", FAILURE, "delivered", False),
    ("a@x.org", DELAY, "failed", False),
    ("a@x.org", DELAY, "delayed", True),
    ("a@x.org", SUCCESS, "failed", False),
    ("a@x.org", SUCCESS, "delayed", False),
    ("a@x.org", SUCCESS, "delivered", True),
    ("a@x.org", SUCCESS, "relayed", True),
    ("a@x.org", SUCCESS, "expanded", True),
    ("a@x.org", ("SUCCESS", "FAILURE"), "failed", True),
    ("a@x.org", ("SUCCESS", "FAILURE"), "delayed", False),
    ("a@x.org", ("SUCCESS", "FAILURE"), "delivered", True),
    ("a@x.org", ("SUCCESS", "FAILURE", "DELAY"), "delayed", True),
    ("a@x.org", ("failure",), "failed", True),
])
def test_should_notify(sender, notify, action, expected):
    assert should_notify(envelope_sender=sender, notify=notify, action=action) is expected


@pytest.mark.parametrize(("notify", "action"), [
    (("NEVER", "FAILURE"), "failed"), (("SOMETIMES",), "failed"), ((), "failed"),
    (None, "bounced"),
])
def test_should_notify_refuses_nonsense(notify, action):
    with pytest.raises(ValueError):
        should_notify(envelope_sender="a@x.org", notify=notify, action=action)


@pytest.mark.parametrize(("value", "expected"), [
    ("NEVER", ("NEVER",)), ("success,FAILURE", ("SUCCESS", "FAILURE")),
    ("DELAY,DELAY", ("DELAY",)), ("FAILURE,DELAY,SUCCESS", ("FAILURE", "DELAY", "SUCCESS")),
])
def test_parse_notify(value, expected):
    assert parse_notify(value) == expected


@pytest.mark.parametrize("value", ["", "NEVER,SUCCESS", "FAILURE,", "FAILURE, DELAY", "ALWAYS"])
def test_parse_notify_malformed(value):
    with pytest.raises(ValueError):
        parse_notify(value)


@pytest.mark.parametrize(("value", "expected"), [
    ("rfc822;a+2Bb@x", "rfc822;a+b@x"),
    ("rfc822;bob@example.org", "rfc822;bob@example.org"),
    ("RFC822;a+3Db@x", "RFC822;a=b@x"),
    ("rfc822;+22a+20b+22@x", 'rfc822;"a b"@x'),
    ("rfc822;a+2bb@x", "rfc822;a+b@x"),                     # lower-case hex is tolerated
    ("x400;c+3Dus;a+3Datt", "x400;c=us;a=att"),
    (r"utf-8;j\x{F6}rg@example.com", r"utf-8;j\x{F6}rg@example.com"),
    ("utf-8;jörg@example.com", "utf-8;jörg@example.com"),
])
def test_parse_orcpt(value, expected):
    assert parse_orcpt(value) == expected


@pytest.mark.parametrize("value", [
    "", "rfc822", "rfc822;", ";a@x", "rfc 822;a@x", "rfc822;a b@x", "rfc822;a+2@x",
    "rfc822;a+@x", "rfc822;a+ZZb@x", "rfc822;a=b@x", "rfc822;a+0Ab@x", "rfc822;a+0D+0Ab@x",
    "rfc822;a+00@x", "rfc822;a+7F@x", "rfc822;a+C3+A9@x", "rfc822;jörg@x",
    "rfc822;a\tb@x", "rfc822;" + "a" * 500, r"utf-8;a\x{D800}@x", r"utf-8;a\x{110000}@x",
    r"utf-8;a\b@x", "utf-8;a+b@x", "utf-8;a=b@x", "utf-8;a b@x", "utf-8;a\x85b@x",
])
def test_parse_orcpt_malformed(value):
    with pytest.raises(ValueError):
        parse_orcpt(value)


@pytest.mark.parametrize(("value", "expected"), [
    ("QQ314159", "QQ314159"), ("inv-1+20batch", "inv-1 batch"), ("a+2Bb+3Dc", "a+b=c"),
    ("x" * 100, "x" * 100),
])
def test_parse_envid(value, expected):
    assert parse_envid(value) == expected


@pytest.mark.parametrize("value", [
    "", "a b", "a+", "a+4", "a+GG", "a=b", "a+0A", "a+0D+0AX-Evil:+201", "é", "x" * 101,
])
def test_parse_envid_malformed(value):
    with pytest.raises(ValueError):
        parse_envid(value)


def xtext(text: str) -> str:
    return "".join(c if 0x21 <= ord(c) <= 0x7E and c not in "+=" else f"+{ord(c):02X}"
                   for c in text)


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
               max_size=100))
def test_xtext_round_trip(text):
    encoded = xtext(text)
    if len(encoded) <= 100:
        assert parse_envid(encoded) == text
    assert parse_orcpt("rfc822;" + encoded) == "rfc822;" + text


@given(st.text(max_size=600))
def test_xtext_decoding_raises_only_value_error(value):
    for parse_value in (parse_envid, parse_orcpt, parse_notify):
        try:
            result = parse_value(value)
        except ValueError:
            continue
        assert isinstance(result, (str, tuple))
        if parse_value is parse_envid:
            assert all(0x20 <= ord(c) <= 0x7E for c in result)


@given(st.text(max_size=300).map(lambda s: "rfc822;" + s))
def test_orcpt_never_decodes_to_a_line_break(value):
    try:
        result = parse_orcpt(value)
    except ValueError:
        return
    assert "\r" not in result
    assert "\n" not in result


@given(original=st.binary(max_size=3000), ret=st.sampled_from([None, "HDRS", "FULL"]))
def test_any_original_makes_a_well_formed_dsn(original, ret):
    dsn = build(original=original, ret=ret)
    assert_wire_format(dsn)
    msg = email.message_from_bytes(dsn, policy=email.policy.default)
    assert len(parts(msg)) == 3
    assert status_blocks(msg)[1]["Action"] == "failed"


def test_bare_cr_original_is_not_returned_whole():
    dsn = build(ret="FULL", original=ORIGINAL.replace(b"Hello", b"Hel\rlo"))
    assert_wire_format(dsn)
    assert parts(parse(dsn))[2].get_content_type() == "text/rfc822-headers"
