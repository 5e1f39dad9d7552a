"""The `[smtp]` and `[dkim]` sections of egen.toml.

Everything that can be checked before listening is checked here (addresses, CIDRs,
password-hash syntax, sender patterns, listener combinations that would make an open
relay or leak passwords), so a bad config stops the daemon at start, not at the first
connection.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from daemon.mail.intake.policy import parse_sender_pattern
from daemon.passwords import parse_hash
from daemon.typedtoml import DURATION, SIZE, Invalid, Secret
from daemon.units import HostPort

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_networks(values: list[str], key: str) -> tuple[Network, ...]:
    found = []
    for i, text in enumerate(values):
        try:
            found.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise Invalid(f"{key}[{i}]", f'"{text}" is not a network (use CIDR, '
                          f'e.g. "10.0.0.0/8")') from None
    return tuple(found)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True)
class ListenerSettings:
    listen: HostPort
    # none: plaintext; starttls: offered after EHLO; implicit: TLS from the first byte (465).
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    # required: every message needs AUTH (unless from trusted_networks); optional: AUTH
    # offered; none: AUTH not offered (trusted networks only).
    auth: Literal["required", "optional", "none"] = "required"
    trusted_networks: list[str] = field(default_factory=list)
    # AUTH without TLS, for a loopback-only listener (local scripts); never elsewhere.
    allow_plaintext_auth: bool = False
    # Clients must STARTTLS before MAIL (only with tls = "starttls").
    require_tls: bool = False
    # A bare LF in DATA: "reject" (550 5.5.2, Postfix's smtpd_forbid_bare_newline = yes),
    # or "normalize" it to CRLF for clients in trusted_networks (old in-house scripts);
    # everyone else is refused either way.
    bare_newline: Literal["reject", "normalize"] = "reject"

    @property
    def networks(self) -> tuple[Network, ...]:
        return _parse_networks(self.trusted_networks, "trusted_networks")

    def check(self) -> None:
        _parse_networks(self.trusted_networks, "trusted_networks")
        if self.allow_plaintext_auth and not _is_loopback(self.listen.host):
            raise Invalid("allow_plaintext_auth", "only allowed on a loopback listen address "
                          "(passwords would cross the network in clear text)")
        if self.auth == "none" and not self.trusted_networks:
            raise Invalid("trusted_networks", 'a listener with auth = "none" needs '
                          "trusted_networks, or nobody could send through it")
        if self.require_tls and self.tls != "starttls":
            raise Invalid("require_tls", 'only meaningful with tls = "starttls"')
        if self.bare_newline == "normalize" and not self.trusted_networks:
            raise Invalid("bare_newline", '"normalize" applies to trusted_networks only, '
                          "and this listener has none")


@dataclass(frozen=True)
class UserSettings:
    # From `egen user hash-password`; scrypt ($scrypt$…) or argon2 ($argon2id$…).
    password_hash: Secret
    allowed_senders: list[str] = field(default_factory=list)

    def check(self) -> None:
        try:
            parse_hash(self.password_hash.reveal())
        except ValueError as err:
            raise Invalid("password_hash", str(err)) from None
        if not self.allowed_senders:
            raise Invalid("allowed_senders", "list at least one sender pattern, "
                          'e.g. ["app@example.com"] or ["*@example.com"]')
        for i, pattern in enumerate(self.allowed_senders):
            try:
                parse_sender_pattern(pattern)
            except ValueError as err:
                raise Invalid(f"allowed_senders[{i}]", str(err)) from None


@dataclass(frozen=True)
class RateSettings:
    # Messages per minute (token bucket refill) and the burst allowed on top.
    per_minute: float = 600.0
    burst: float = 100.0

    def check(self) -> None:
        if self.per_minute <= 0 or self.burst < 1:
            raise Invalid("per_minute", "per_minute must be positive and burst at least 1")


@dataclass(frozen=True)
class SmtpSettings:
    listeners: list[ListenerSettings] = field(default_factory=list)
    max_message_size: Annotated[int, SIZE] = 25 * 10**6
    max_recipients: int = 100
    max_connections: int = 1000
    # Per client address; clients in a listener's trusted_networks are exempt.
    max_connections_per_client: int = 50
    # Idle time allowed between commands before the connection is closed.
    timeout: Annotated[float, DURATION] = 300.0
    # Time a new connection has to send its first command (a client that wants to send
    # mail says EHLO at once; one that holds sockets says nothing).
    first_command_timeout: Annotated[float, DURATION] = 30.0
    # PEM certificate chain and key for tls = starttls/implicit listeners, reloaded on
    # SIGHUP. Without them egen generates a self-signed certificate under
    # <state_dir>/tls (fine for apps that do not verify, never for the public internet).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    users: dict[str, UserSettings] = field(default_factory=dict)
    rate_per_user: RateSettings = field(default_factory=RateSettings)
    rate_per_client: RateSettings = field(default_factory=lambda: RateSettings(1200.0, 200.0))
    # Failed AUTH attempts for one user name from one client address before that name is
    # blocked from that address for auth_block (other users there are not affected).
    auth_failures: int = 5
    auth_block: Annotated[float, DURATION] = 300.0

    def check(self) -> None:
        for name in ("max_connections", "max_connections_per_client"):
            if getattr(self, name) < 1:
                raise Invalid(name, "must be at least 1")
        for name in ("timeout", "first_command_timeout"):
            if getattr(self, name) <= 0:
                raise Invalid(name, "must be longer than 0s")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise Invalid("tls_key" if self.tls_key is None else "tls_cert",
                          "tls_cert and tls_key go together")
        if self.max_recipients < 1:
            raise Invalid("max_recipients", "must be at least 1")
        if self.max_message_size < 1024:
            raise Invalid("max_message_size", "must be at least 1KB")
        for i, listener in enumerate(self.listeners):
            if listener.auth != "none" and not self.users:
                raise Invalid(f"listeners[{i}].auth", f'"{listener.auth}" needs at least '
                              "one user in [smtp.users]")
        seen: set[HostPort] = set()
        for i, listener in enumerate(self.listeners):
            if listener.listen in seen and listener.listen.port != 0:
                raise Invalid(f"listeners[{i}].listen", f'"{listener.listen}" is used twice')
            seen.add(listener.listen)


@dataclass(frozen=True)
class DkimKeySettings:
    domain: str
    selector: str
    key_file: Path
    algorithm: Literal["rsa", "ed25519"] = "rsa"
    # Create key_file on first start when it is missing (dev setups); in production
    # generate keys with `egen dkim keygen` and publish the record before using them.
    generate: bool = False


@dataclass(frozen=True)
class DkimSettings:
    keys: list[DkimKeySettings] = field(default_factory=list)
    # Mail whose From: domain has no key: "relay" it unsigned, or "refuse" it (550).
    unsigned: Literal["relay", "refuse"] = "relay"

    def check(self) -> None:
        seen = set()
        for i, key in enumerate(self.keys):
            ident = (key.domain.lower(), key.selector)
            if ident in seen:
                raise Invalid(f"keys[{i}].selector",
                              f'"{key.selector}" is configured twice for {key.domain}')
            seen.add(ident)


@dataclass(frozen=True)
class DeliverySettings:
    # false: this node only accepts mail; other nodes sharing the database deliver it.
    enabled: bool = True
    # Port of MX hosts (25; tests point it at unprivileged ports).
    port: int = 25
    # DNS servers for MX lookups ("10.0.0.2", "127.0.0.1:5353"); empty: /etc/resolv.conf.
    nameservers: list[str] = field(default_factory=list)
    dns_timeout: Annotated[float, DURATION] = 10.0
    # Connections at once in total, and to one destination host.
    concurrency: int = 100
    per_destination: int = 10
    connect_timeout: Annotated[float, DURATION] = 30.0
    # Upper bound for one SMTP command (DATA included) on an outgoing connection.
    command_timeout: Annotated[float, DURATION] = 300.0
    # How long a claim on a recipient lasts before another node may take it over.
    lease: Annotated[float, DURATION] = 600.0
    # How often an idle node looks for due work (new mail wakes it at once).
    poll_interval: Annotated[float, DURATION] = 2.0
    batch: int = 200
    # Retry schedule, like Postfix: 5m, doubling up to 70m, give up after 5 days.
    first_retry: Annotated[float, DURATION] = 300.0
    max_backoff: Annotated[float, DURATION] = 4200.0
    lifetime: Annotated[float, DURATION] = 5 * 86400.0
    # Warn the sender once when a message is still undelivered after this long (an RFC
    # 3464 "delayed" notice, for recipients whose NOTIFY allows it); 0 is off, as in
    # Postfix (its delay_warning_time). "4h" is a common choice.
    delay_warning: Annotated[float, DURATION] = 0.0
    # Sender of bounces (the From: of DSNs; their envelope sender is always <>).
    postmaster: str | None = None

    def check(self) -> None:
        if not 1 <= self.port <= 65535:
            raise Invalid("port", "must be between 1 and 65535")
        for name in ("concurrency", "per_destination", "batch"):
            if getattr(self, name) < 1:
                raise Invalid(name, "must be at least 1")
        if self.first_retry > self.max_backoff:
            raise Invalid("first_retry", "must not exceed delivery.max_backoff")
        if self.lifetime < self.first_retry:
            raise Invalid("lifetime", "must be at least delivery.first_retry")
        if self.delay_warning < 0:
            raise Invalid("delay_warning", "must not be negative (0 switches it off)")
        if self.delay_warning >= self.lifetime:
            raise Invalid("delay_warning", "must be shorter than delivery.lifetime, or "
                          "the message expires before the warning is due")

