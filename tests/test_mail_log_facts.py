"""What the mail log keeps of a message's content at queue time: its decoded Subject and,
for a delivery status notification egen wrote, the queue ID of the message it reports on."""

from __future__ import annotations

import dataclasses
import email.policy

from hypothesis import given
from hypothesis import strategies as st

from daemon.mail.delivery.bounce import RecipientStatus, build_dsn
from daemon.mail.queue.store import MAX_SUBJECT, log_facts
from tests.test_mail_queue import sample_mail


def facts(head: bytes, *, sender: str = "app@example.com") -> dict[str, str]:
    envelope, _ = sample_mail(1)
    data = head + b"\r\n\r\nbody\r\n"
    return log_facts(dataclasses.replace(envelope, sender=sender, size=len(data)), data)


def test_the_subject_is_decoded_and_unfolded() -> None:
    assert facts(b"From: a@example.com\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
                 b" from the\r\n\tteam") == {"subject": "Grüße from the\tteam"}
    assert facts(b"subject:plain")["subject"] == "plain"


def test_no_subject_and_a_long_one() -> None:
    assert facts(b"From: a@example.com") == {}
    assert len(facts(b"Subject: " + b"x" * 5000)["subject"]) == MAX_SUBJECT


def test_a_subject_in_the_body_is_not_the_subject() -> None:
    envelope, _ = sample_mail(1)
    data = b"From: a@example.com\r\n\r\nSubject: not a header\r\n"
    assert log_facts(dataclasses.replace(envelope, size=len(data)), data) == {}


def test_a_notification_names_the_message_it_reports_on() -> None:
    original, data = sample_mail(2)
    dsn = build_dsn(original=data, envelope_sender=original.sender, recipients=[
        RecipientStatus(recipient="gone@example.org", original_recipient=None,
                        action="failed", status="5.1.1", remote_mta="mx.example.org",
                        diagnostic="550 5.1.1 no such user", last_attempt=1.0,
                        will_retry_until=None)],
        reporting_mta="relay.test", postmaster="postmaster@relay.test",
        queue_id=original.queue_id, arrival=1.0, now=2.0, envid=None, ret=None,
        message_id_domain="relay.test")
    envelope, _ = sample_mail(3)
    notice = dataclasses.replace(envelope, sender="", size=len(dsn))
    assert log_facts(notice, dsn)["about"] == original.queue_id
    # Mail from an application that quotes such a line is about nothing.
    assert "about" not in log_facts(dataclasses.replace(notice, sender="app@example.com"), dsn)


@given(st.binary(max_size=400))
def test_any_bytes_give_facts_or_none(data: bytes) -> None:
    envelope, _ = sample_mail(4)
    found = log_facts(dataclasses.replace(envelope, sender="", size=len(data)), data)
    assert set(found) <= {"subject", "about"}
    assert len(found.get("subject", "")) <= MAX_SUBJECT


SUBJECT_TEXT = st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF,
                                     blacklist_characters="\r\n"), max_size=120)


@given(SUBJECT_TEXT)
def test_a_subject_reads_as_the_email_parser_reads_it(text: str) -> None:
    """Only subjects with encoded words go through the email package's parser; the others
    must come out exactly as the parser would have given them."""
    expected = str(email.policy.default.header_factory("subject", text)).strip()
    got = facts(b"From: a@example.com\r\nSubject: " + text.encode())
    assert got.get("subject", "") == expected[:MAX_SUBJECT]
