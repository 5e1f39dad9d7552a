"""The records egen prints are the records egen's checks want: generate the keys, build
the records, publish them on a real DNS answerer, and every check passes; a message egen
signs then verifies with dkimpy against the published keys. The same through the
`egen dns` verbs, whose exit status gates a deploy."""

from __future__ import annotations

import asyncio
import email
import subprocess
import sys
from pathlib import Path

import aiosmtplib
import dkim
import dns.asyncresolver
import dns.resolver
import orjson

from daemon.config import Settings, load
from daemon.dnssetup.checks import exit_status, resolver_for, run_checks
from daemon.dnssetup.records import DnsRecord, build_records
from daemon.mail.intake.server import load_keyring
from tests.dnsserver import DnsServer
from tests.mailfixtures import mail_config, port, started_app
from tests.test_delivery import wait_status

DNS = """
[dns]
addresses = ["127.0.0.5"]
dmarc_rua = ["mailto:dmarc@example.com", "mailto:reports@dmarc.example.net"]
mx = ["10 mx1.example.com"]
mta_sts_mode = "testing"
tls_rpt_rua = ["mailto:tlsrpt@example.com"]
"""


def publish(server: DnsServer, records: list[DnsRecord]) -> None:
    by_name: dict[tuple[str, str], list[str]] = {}
    for record in records:
        text = (" ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
                         for s in record.strings()) if record.type == "TXT"
                else record.value if record.type != "PTR" else record.value + ".")
        by_name.setdefault((record.name, record.type), []).append(text)
    for (name, rdtype), texts in by_name.items():
        server.set(name, rdtype, texts)


def keys_of(settings: Settings) -> list:
    keyring = load_keyring(settings.dkim)
    return [key for domain in keyring.domains for key in keyring.signer_for(domain).keys]


async def test_published_records_pass_every_check_and_verify_signatures(
        tmp_path: Path, pg_url: str) -> None:
    settings = mail_config(tmp_path, pg_url, extra=DNS)
    settings = load(settings.source.parent / "egen.toml")    # hostname relay.test
    keys = keys_of(settings)
    records = build_records(settings, keys=keys, include_mx=True)
    server = DnsServer()
    await server.start()
    try:
        publish(server, records)
        server.set("relay.test", "A", ["127.0.0.5"])       # the MX host and forward DNS
        server.set("mx1.example.com", "A", ["127.0.0.5"])
        resolver = resolver_for(f"127.0.0.1:{server.port}", timeout=2.0)
        checks = await run_checks(settings, keys=keys, resolver=resolver)
        assert [c for c in checks if c.status == "fail"] == []
        assert exit_status(checks) == 0
        assert {c.name.split()[0] for c in checks} >= {"spf", "dkim", "dmarc", "ptr"}

        async with started_app(settings) as app:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 0)) as client:
                _, reply = await client.sendmail(
                    "app@example.com", ["ops@example.org"],
                    b"From: app@example.com\r\nTo: ops@example.org\r\n"
                    b"Subject: hello\r\n\r\nHello.\r\n")
            await wait_status(app, reply.rsplit(" ", 1)[1], {"ops@example.org": "delivered"})
        [delivered] = list((tmp_path / "maildir" / "new").iterdir())
        signed = delivered.read_bytes().split(b"\r\n", 1)[1]     # past Return-Path
        sync = dns.resolver.Resolver(configure=False)
        sync.nameservers = ["127.0.0.1"]
        sync.port = server.port

        def lookup(name: bytes, timeout: int = 5) -> bytes:
            answer = sync.resolve(name.decode().rstrip("."), "TXT")
            return b"".join(answer[0].strings)

        count = email.message_from_bytes(signed).get_all("DKIM-Signature")
        verdicts = await asyncio.to_thread(
            lambda: [dkim.DKIM(signed).verify(idx=i, dnsfunc=lookup)
                     for i in range(len(count))])
        assert verdicts == [True, True]
    finally:
        server.stop()


async def test_the_dns_verbs_gate_a_deploy(tmp_path: Path, pg_url: str) -> None:
    settings = mail_config(tmp_path, pg_url, extra=DNS)
    config = str(settings.source)
    server = DnsServer()
    await server.start()
    try:
        def egen(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "daemon", *args, "--config", config],
                                  capture_output=True, text=True, timeout=120, check=False)

        shown = await asyncio.to_thread(egen, "dns", "records", "--format", "json",
                                        "--offline")
        assert shown.returncode == 0, shown.stderr
        found = orjson.loads(shown.stdout)
        names = {(r["name"], r["type"]) for r in found}
        assert ("example.com", "TXT") in names and ("_dmarc.example.com", "TXT") in names
        assert ("example.com._report._dmarc.dmarc.example.net", "TXT") in names
        nameserver = f"127.0.0.1:{server.port}"
        failing = await asyncio.to_thread(egen, "dns", "check", "--nameserver", nameserver)
        assert failing.returncode == 1 and "FAIL" in failing.stdout

        publish(server, [DnsRecord(r["name"], r["type"], r["value"]) for r in found])
        server.set("relay.test", "A", ["127.0.0.5"])
        passing = await asyncio.to_thread(egen, "dns", "check", "--nameserver", nameserver,
                                          "--format", "json")
        assert passing.returncode == 0, passing.stdout
        assert all(c["status"] != "fail" for c in orjson.loads(passing.stdout))
        zone = await asyncio.to_thread(egen, "dns", "records", "--offline", "--domain",
                                       "example.com")
        assert "_domainkey.example.com." in zone.stdout and "v=DMARC1" in zone.stdout
    finally:
        server.stop()
