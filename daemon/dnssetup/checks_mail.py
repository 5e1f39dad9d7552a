"""The checks of what makes a message's signature count: the DKIM key records (published
once, whole, and the public half of the key egen signs with) and the DMARC policy (one
record, well formed, in line with how egen signs, and able to deliver its reports).

A DKIM record that does not match the local key fails every signature while mail still
flows, and a DMARC typo makes receivers ignore the whole policy; both are invisible until
someone reads a report, which is why they are checked before a deploy.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import re

import dns.asyncresolver

from daemon.config import Settings
from daemon.dnssetup.probe import (
    Check,
    QueryFailed,
    could_not_query,
    parent_domains,
    parse_tags,
    txt,
)
from daemon.mail.dkimkeys import RECOMMENDED_RSA_BITS, DkimKey

POLICIES = ("none", "quarantine", "reject")
#: Tags DMARC (RFC 9989) defines; anything else is most likely a typo.
KNOWN_DMARC_TAGS = frozenset({"v", "p", "sp", "np", "adkim", "aspf", "rua", "ruf", "fo",
                              "t", "psd"})
#: Tags of RFC 7489 that RFC 9989 removed; receivers ignore them now.
REMOVED_DMARC_TAGS = ("pct", "rf", "ri")
_DMARC = re.compile(r"v\s*=\s*DMARC1\s*(;|$)")
#: Second-level labels under which ccTLDs register domains (example.co.uk), for telling
#: organizational domains apart without a public suffix list.
_PUBLIC_SECOND_LEVEL = frozenset({"ac", "co", "com", "edu", "gob", "gov", "ltd", "ne",
                                  "net", "or", "org", "plc"})


# -- DKIM --------------------------------------------------------------------------------

async def dkim_check(key: DkimKey, resolver: dns.asyncresolver.Resolver) -> Check:
    """The selector's TXT record is there once and publishes this key's public half."""
    owner = key.dns_name()
    name = f"dkim {owner}"
    expected = key.dns_value()
    publish = f"publish one TXT record at {owner}: {expected}"
    try:
        records = await txt(resolver, owner)
    except QueryFailed as e:
        return could_not_query(name, e, key.domain)
    if not records:
        return Check(name, "fail", "no DKIM key record", publish)
    if len(records) > 1:
        return Check(name, "fail", f"{len(records)} TXT records: a long key must be one "
                     "record made of several strings, not several records", publish)
    problem = _dkim_problem(records[0], key, expected.split("p=", 1)[1])
    if problem:
        return Check(name, "fail", problem, publish)
    if key.weak:
        return Check(name, "warn", f"matches the local key, but it has {key.key_bits} bits; "
                     f"RFC 8301 asks for at least {RECOMMENDED_RSA_BITS}",
                     f"create a {RECOMMENDED_RSA_BITS}-bit key under a new selector (egen dkim "
                     "keygen), publish its record, switch dkim.keys to it, then remove "
                     f"{owner}")
    return Check(name, "pass", f"{key.algorithm} key ({key.key_bits} bits) matches "
                 f"{key.path or 'the local key'}")


def _dkim_problem(record: str, key: DkimKey, local: str) -> str:
    """What is wrong with the published record, or "" when it matches the local key."""
    try:
        tags = parse_tags(record)
    except ValueError as e:
        return f"not a DKIM key record ({e}): {record[:80]}"
    if "v" in tags and (next(iter(tags)) != "v" or tags["v"] != "DKIM1"):
        return f"v={tags['v']} must come first and be DKIM1"
    algorithm = tags.get("k", "rsa").lower()
    if algorithm != key.algorithm:
        return f"k={algorithm}, but the local key is {key.algorithm}"
    if "p" not in tags:
        return "no p= tag: the record carries no public key"
    published = re.sub(r"\s", "", tags["p"])
    if not published:
        return "p= is empty: the key is revoked"
    try:
        decoded = base64.b64decode(published, validate=True)
    except (binascii.Error, ValueError):
        decoded = None
    if decoded == base64.b64decode(local):
        return ""
    if local.startswith(published):
        return (f"p= is cut short: {len(published)} of the key's {len(local)} characters "
                "(a string of the record lost?)")
    if decoded is None:
        return "p= is not valid base64 (split wrongly, or quotes inside the value?)"
    return f"p= does not match the local key {key.path or ''}".rstrip()


# -- DMARC -------------------------------------------------------------------------------

def is_dmarc(text: str) -> bool:
    return _DMARC.match(text) is not None


def organizational_domain(domain: str) -> str:
    """The registered domain by a rule of thumb: two labels, three under ccTLD second
    levels like co.uk. Only used to decide whether a report address is external."""
    labels = domain.lower().rstrip(".").split(".")
    size = 3 if (len(labels) >= 3 and len(labels[-1]) == 2
                 and labels[-2] in _PUBLIC_SECOND_LEVEL) else 2
    return ".".join(labels[-size:])


def _rua_note(settings: Settings) -> str:
    """Said beside a suggested rua= that the config did not name."""
    return "" if settings.dns.dmarc_rua else (" (rua= must be a mailbox that reads the "
                                              "reports; dns.dmarc_rua sets it)")


def suggested_dmarc(settings: Settings, domain: str) -> str:
    dns = settings.dns
    tags = [f"p={dns.dmarc_policy}"]
    tags += [f"sp={dns.dmarc_subdomain_policy}"] if dns.dmarc_subdomain_policy else []
    tags += [f"np={dns.dmarc_nonexistent_policy}"] if dns.dmarc_nonexistent_policy else []
    tags.append(f"rua={','.join(dns.dmarc_rua) or f'mailto:dmarc-reports@{domain}'}")
    if dns.dmarc_alignment == "strict":
        tags += ["adkim=s", "aspf=s"]
    tags += ["t=y"] if dns.dmarc_testing else []
    return "; ".join(["v=DMARC1", *tags])


async def dmarc_checks(settings: Settings, domain: str, signing: set[str],
                       resolver: dns.asyncresolver.Resolver) -> list[Check]:
    """The policy record that applies to `domain` (its own, or a parent's), and the
    authorization of each external report address it names."""
    name = f"dmarc {domain}"
    policy_domain, records = domain, []
    try:
        for candidate in parent_domains(domain):  # RFC 9989's tree walk, in short
            records = [r for r in await txt(resolver, f"_dmarc.{candidate}") if is_dmarc(r)]
            if records:
                policy_domain = candidate
                break
    except QueryFailed as e:
        return [could_not_query(name, e, domain)]
    owner = f"_dmarc.{policy_domain}"
    suggested = suggested_dmarc(settings, policy_domain) + _rua_note(settings)
    if not records:
        return [Check(name, "fail", f"no DMARC record at _dmarc.{domain}",
                      f"publish TXT at _dmarc.{domain}: {suggested}")]
    if len(records) > 1:
        return [Check(name, "fail", f"{len(records)} DMARC records at {owner}: receivers "
                      f"ignore them all: {' | '.join(records)}",
                      f"replace them with one TXT record at {owner}: {suggested}")]
    record = records[0]
    try:
        tags = {k.lower(): v for k, v in parse_tags(record).items()}
    except ValueError as e:
        return [Check(name, "fail", f"malformed ({e}): {record}",
                      f"publish instead at {owner}: {suggested}")]
    signer = next((d for d in parent_domains(domain) if d in signing), None)
    check = _judge_dmarc(settings, domain, policy_domain=policy_domain, record=record,
                         tags=tags, signer=signer)
    return [check, *await _rua_checks(domain, policy_domain, tags.get("rua", ""), resolver)]


def _judge_dmarc(settings: Settings, domain: str, *, policy_domain: str, record: str,
                 tags: dict[str, str], signer: str | None) -> Check:
    failures: list[str] = []
    warnings: list[str] = []
    fixed = dict(tags)
    for tag, default in (("p", settings.dns.dmarc_policy),
                         ("sp", settings.dns.dmarc_subdomain_policy),
                         ("np", settings.dns.dmarc_nonexistent_policy)):
        if tag == "p" and tag not in tags:
            failures.append("p= is missing")
        elif tag in tags and tags[tag].lower() not in POLICIES:
            failures.append(f"{tag}={tags[tag]} is not none, quarantine or reject")
        else:
            continue
        # A typo keeps its meaning (quarentine → quarantine); else the config's policy.
        meant = difflib.get_close_matches(tags.get(tag, "").lower(), POLICIES, 1)
        if meant or default:
            fixed[tag] = meant[0] if meant else default
        else:
            fixed.pop(tag, None)
    for tag, allowed in (("adkim", ("r", "s")), ("aspf", ("r", "s")), ("t", ("y", "n"))):
        if tag in tags and tags[tag].lower() not in allowed:
            failures.append(f"{tag}={tags[tag]} is not {' or '.join(allowed)}")
            del fixed[tag]
    for tag, value in tags.items():
        if tag in REMOVED_DMARC_TAGS:
            partial = tag == "pct" and value != "100"
            hint = "; use t=y for a partial rollout" if partial else ""
            warnings.append(f"{tag}= was removed by RFC 9989 and is ignored{hint}")
            del fixed[tag]
        elif tag not in KNOWN_DMARC_TAGS:
            warnings.append(f"unknown tag {tag}= (a typo?)")
            del fixed[tag]
    if fixed.get("p", "").lower() == "none" and not tags.get("rua"):
        warnings.append("p=none without rua=: you get no reports, so you cannot tell when "
                        "it is safe to tighten the policy")
        fixed["rua"] = (",".join(settings.dns.dmarc_rua)
                        or f"mailto:dmarc-reports@{policy_domain}")
    fixes = []
    if failures or warnings:
        order = sorted(fixed, key=lambda tag: {"v": 0, "p": 1}.get(tag, 2))
        note = _rua_note(settings) if fixed.get("rua") != tags.get("rua") else ""
        fixes.append(f"publish instead at _dmarc.{policy_domain}: "
                     + "; ".join(f"{tag}={fixed[tag]}" for tag in order) + note)
    alignment = _alignment(domain, tags.get("adkim", "r").lower(), signer)
    if alignment:
        warnings.append(alignment[0])
        fixes.append(alignment[1])
    where = "" if policy_domain == domain else f" (inherited from _dmarc.{policy_domain})"
    found = f"{record}{where}"
    if failures or warnings:
        status = "fail" if failures else "warn"
        return Check(f"dmarc {domain}", status, f"{found}: {'; '.join(failures + warnings)}",
                     "; ".join(fixes))
    return Check(f"dmarc {domain}", "pass", f"{found}; DKIM d={signer} is aligned")


def _alignment(domain: str, adkim: str, signer: str | None) -> tuple[str, str] | None:
    """egen signs mail from `domain` with d=`signer` (the domain or its nearest parent
    with a key): aligned under relaxed, under strict only when they are equal."""
    if signer is None:
        return (f"no DKIM key signs mail from {domain}: DMARC can pass only through SPF",
                f"add a [[dkim.keys]] entry for {domain} (egen dkim keygen) and publish it")
    if adkim == "s" and signer != domain:
        return (f"adkim=s, but egen signs mail from {domain} with d={signer}: not aligned",
                f"use adkim=r, or add a [[dkim.keys]] entry for {domain}")
    return None


async def _rua_checks(domain: str, policy_domain: str, rua: str,
                      resolver: dns.asyncresolver.Resolver) -> list[Check]:
    """RFC 7489 §7.1: a report address at another organization takes reports only if
    that organization says so in `<policy domain>._report._dmarc.<its domain>`."""
    checks: list[Check] = []
    targets = [uri.strip()[7:].split("!")[0] for uri in rua.split(",")
               if uri.strip().lower().startswith("mailto:")]
    seen: set[str] = set()
    for address in targets:
        target = address.rpartition("@")[2].lower().rstrip(".")
        if (not target or target in seen
                or organizational_domain(target) == organizational_domain(policy_domain)):
            continue
        seen.add(target)
        name = f"dmarc rua at {target} for {domain}"
        owner = f"{policy_domain}._report._dmarc.{target}"
        fix = (f"{target} must publish TXT at {owner}: v=DMARC1 (or remove "
               f"mailto:{address} from rua=)")
        try:
            records = [r for r in await txt(resolver, owner) if is_dmarc(r)]
        except QueryFailed as e:
            checks.append(could_not_query(name, e, target))
            continue
        except ValueError as e:
            checks.append(Check(name, "fail", str(e), f"remove mailto:{address} from rua="))
            continue
        if records:
            checks.append(Check(name, "pass", f"{owner} authorizes the reports"))
        else:
            checks.append(Check(name, "fail", f"no authorization record at {owner}: "
                                "receivers send no aggregate reports there", fix))
    return checks
