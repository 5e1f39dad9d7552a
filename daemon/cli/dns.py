"""`egen dns records` and `egen dns check`: the DNS an operator must publish for egen's
mail to be trusted, and whether what is published is right (exit 1 when a check fails,
so it can gate a deploy). Parsing and printing only; the rules live in daemon.dnssetup.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from daemon.cli.common import load_settings
from daemon.cli.output import print_json

if TYPE_CHECKING:
    from daemon.config import Settings
    from daemon.mail.dkimkeys import DkimKey

EXIT_OK, EXIT_FAILURE = 0, 1


def add_dns_verbs(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    dns = verbs.add_parser("dns", help="DNS records to publish, and checks of what is",
                           description="SPF, DKIM, DMARC, MTA-STS, TLS-RPT and PTR records "
                                       "for the sending domains, and checks of what is "
                                       "published.")
    dns_verbs = dns.add_subparsers(dest="dns_verb", metavar="VERB", required=True)
    records = dns_verbs.add_parser(
        "records", parents=[common], help="print the records to publish",
        description="Print the DNS records the config asks for: per sending domain SPF "
                    "(merged with a published one, never a second record), one DKIM TXT per "
                    "key, DMARC, MTA-STS and TLS-RPT when configured, and the PTR and A "
                    "records of the relay's addresses. Generates DKIM keys that the config "
                    "marks `generate = true` and that do not exist yet.")
    records.add_argument("--format", choices=["zone", "json"], default="zone")
    records.add_argument("--mx", action="store_true", help="also the MX records (dns.mx)")
    records.add_argument("--nameserver", metavar="HOST[:PORT]",
                         help="where to look up published SPF records to merge with "
                              "(default: the system resolver)")
    records.add_argument("--offline", action="store_true",
                         help="do not look up published SPF records")
    records.add_argument("--domain", help="only this sending domain (and the PTR records)")
    records.set_defaults(func=cmd_dns_records)
    check = dns_verbs.add_parser(
        "check", parents=[common], help="check what is published (exit 1 on a failure)",
        description="Query the published records and report each check as pass, warn or "
                    "fail with the exact fix. Exit 0 when nothing fails, else 1.")
    check.add_argument("--format", choices=["text", "json"], default="text")
    check.add_argument("--nameserver", metavar="HOST[:PORT]",
                       help="the DNS server to ask (default: the system resolver)")
    check.add_argument("--domain", help="only this sending domain (and reverse DNS)")
    check.set_defaults(func=cmd_dns_check)


def _settings_and_keys(args: argparse.Namespace) -> tuple[Settings, list[DkimKey]] | None:
    """The config and its DKIM keys (generating those marked `generate = true` that do not
    exist yet); None, with the reason on stderr, when a key cannot be read or made."""
    from daemon.mail.dkimkeys import DkimError
    from daemon.mail.intake.server import load_keyring

    settings = load_settings(args)
    try:
        keyring = load_keyring(settings.dkim)
    except (DkimError, OSError) as err:
        sys.stderr.write(f"egen: {err}\n")
        return None
    return settings, [key for domain in keyring.domains
                      for key in keyring.signer_for(domain).keys]  # type: ignore[union-attr]


async def _published_spf(domains: list[str], nameserver: str | None) -> dict[str, str]:
    import dns.exception
    import dns.resolver

    from daemon.dnssetup.checks import resolver_for

    resolver = resolver_for(nameserver)
    found: dict[str, str] = {}
    for domain in domains:
        try:
            answer = await resolver.resolve(domain, "TXT")
        except (dns.exception.DNSException, OSError):
            continue
        spf = [b"".join(r.strings).decode(errors="replace") for r in answer]
        spf = [text for text in spf if text.lower().startswith("v=spf1")]
        if len(spf) == 1:
            found[domain] = spf[0]
    return found


def cmd_dns_records(args: argparse.Namespace) -> int:
    import uvloop

    from daemon.dnssetup import records as build

    loaded = _settings_and_keys(args)
    if loaded is None:
        return EXIT_FAILURE
    settings, keys = loaded
    domains = build.sending_domains(settings)
    if args.domain:
        if args.domain.lower() not in domains:
            sys.stderr.write(f"egen: {args.domain} is not a sending domain of this config "
                             f"({', '.join(domains) or 'none'})\n")
            return EXIT_FAILURE
        domains = [args.domain.lower()]
    existing = {} if args.offline else uvloop.run(_published_spf(domains, args.nameserver))
    found = build.build_records(settings, keys=keys, existing_spf=existing,
                                include_mx=args.mx)
    if args.domain:
        found = [r for r in found if r.type in ("PTR", "A", "AAAA") or _about(r.name, domains)]
    if args.format == "json":
        print_json(build.records_json(found))
        return EXIT_OK
    for record in found:
        if record.note:
            sys.stdout.write(f"; {record.note}\n")
        sys.stdout.write(record.zone_line() + "\n")
    if settings.dns.mta_sts_mode is not None:
        for domain in domains:
            sys.stdout.write(f"\n; Serve this at https://mta-sts.{domain}/.well-known/"
                             "mta-sts.txt:\n")
            for line in build.mta_sts_policy(settings.dns).splitlines():
                sys.stdout.write(f";   {line}\n")
    return EXIT_OK


def cmd_dns_check(args: argparse.Namespace) -> int:
    import uvloop

    from daemon.dnssetup import checks

    loaded = _settings_and_keys(args)
    if loaded is None:
        return EXIT_FAILURE
    settings, keys = loaded

    async def run() -> list[checks.Check]:
        resolver = checks.resolver_for(args.nameserver)
        return await checks.run_checks(settings, keys=keys, resolver=resolver)

    found = uvloop.run(run())
    if args.domain:
        found = [c for c in found if _about(c.name.rsplit(" ", 1)[-1], [args.domain.lower()])
                 or not c.name.startswith(("spf", "dkim", "dmarc", "mta-sts", "tls-rpt"))]
    if args.format == "json":
        print_json(checks.checks_json(found))
    else:
        sys.stdout.write(checks.render_text(found))
    return checks.exit_status(found)


def _about(name: str, domains: list[str]) -> bool:
    """A record or check about one of `domains`: at the domain, below it, or the DMARC
    report authorization (`<domain>._report._dmarc.<other>`) it asks another to publish."""
    name = name.lower().rstrip(".")
    if "._report._dmarc." in name:
        return any(name.startswith(f"{d}._report._dmarc.") for d in domains)
    return any(name == d or name.endswith("." + d) for d in domains)
