"""The `[[projects]]` and `[ingest]` sections of egen.toml.

Projects in the config are the ones an operator wants under version control (their ids
and keys must not change between deploys, or every DSN in every app breaks); projects
added with `egen project add` live only in the database. Both kinds are checked here so
a DSN that could never work stops the daemon at start.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Literal

from daemon.typedtoml import SIZE, Invalid, Secret, caught
from daemon.units import HostPort

Level = Literal["debug", "info", "warning", "error", "fatal"]
# Sentry's public keys are 32 hex digits; egen accepts any URL-safe token so an operator
# can keep a memorable key in development ("devkey").
KEY_PATTERN = re.compile(r"[A-Za-z0-9_\-]{4,64}")
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")


def check_key(key: str, where: str) -> None:
    if not KEY_PATTERN.fullmatch(key):
        raise Invalid(where, f"{key!r} is not a usable key: 4 to 64 letters, digits, "
                             "'-' or '_'")


def check_name(name: str, where: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise Invalid(where, f"{name!r} is not a usable project name: lowercase letters, "
                             "digits, '-' and '_', starting with a letter or digit")


def check_origin(origin: str, where: str) -> None:
    if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
        raise Invalid(where, f"{origin!r} is not an origin: use \"*\" or "
                             "scheme://host[:port], e.g. \"https://app.example.com\"")


@dataclass(frozen=True)
class ProjectSettings:
    name: str
    id: int
    # Public keys (the user part of the DSN); several allow rotating one without downtime.
    keys: list[str]
    # Origins browser SDKs may post from (CORS); "*" allows any.
    allowed_origins: list[str] = field(default_factory=lambda: ["*"])
    # Events accepted per minute (token bucket, bursts up to a minute's worth); 0: no limit.
    rate_limit: int = 0
    # Lines from log shippers (/api/v1/events, UDP) below this level are counted as
    # filtered, not stored. SDK events are always kept.
    min_level: Level = "warning"

    def check(self) -> Iterator[Invalid]:
        yield from caught(check_name, self.name, "name")
        if not 1 <= self.id <= 2**31 - 1:
            yield Invalid("id", "must be between 1 and 2147483647")
        if not self.keys:
            yield Invalid("keys", "needs at least one key")
        for i, key in enumerate(self.keys):
            yield from caught(check_key, key, f"keys[{i}]")
        for i, origin in enumerate(self.allowed_origins):
            yield from caught(check_origin, origin, f"allowed_origins[{i}]")
        if self.rate_limit < 0:
            yield Invalid("rate_limit", "must be 0 (no limit) or more")


Format = Literal["gelf", "json", "syslog"]


@dataclass(frozen=True)
class DatagramListenerSettings:
    """A UDP listener for log shippers: GELF, JSON or syslog datagrams for one project
    (datagrams carry no key, so the listener names the project)."""

    listen: HostPort
    project: str
    formats: list[Format] = field(default_factory=lambda: ["gelf", "json", "syslog"])
    # Senders allowed to post; datagrams from elsewhere are dropped and counted.
    allowed_sources: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # Lines below this level are counted as filtered, not stored; unset: the project's
    # own min_level, so one setting governs every shipper of a project.
    min_level: Level | None = None

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(text, strict=False) for text in self.allowed_sources)

    def check(self) -> None:
        check_name(self.project, "project")
        if not self.formats:
            raise Invalid("formats", "needs at least one of gelf, json, syslog")
        for i, text in enumerate(self.allowed_sources):
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise Invalid(f"allowed_sources[{i}]", f'"{text}" is not a network (use '
                              'CIDR, e.g. "10.0.0.0/8")') from None


@dataclass(frozen=True)
class IngestSettings:
    # Largest decompressed request body (an envelope, a shipper batch): Vector batches up
    # to 10 MB and does not retry a 413, so keep this well above that.
    max_body_size: Annotated[int, SIZE] = 20 * 2**20
    # Largest single event (Relay's limit).
    max_event_size: Annotated[int, SIZE] = 2**20
    # Where SDKs reach egen, for the DSNs `egen project list` prints
    # ("https://errors.example.com", or with a reverse proxy's path prefix); unset: the
    # first http.listen address.
    public_url: str | None = None
    # Bearer token of the operator API (/api/v1/issues…); unset: the API is off.
    api_token: Secret | None = None
    # A second token that may only read (dashboards): GET calls, project keys masked.
    api_read_token: Secret | None = None
    # How long events are kept, and how many per issue (issue counts stay exact).
    retention_days: int = 30
    max_events_per_issue: int = 1000
    # Per-issue users, tag value counts, hourly counts and releases, written with each
    # batch for the web pages; false skips them (the pages then show counts and events
    # only), which is what scripts/bench-ingest compares against.
    facets: bool = True
    # Worker processes that digest (parse, normalize, fingerprint) what the Sentry
    # endpoints accepted unread, when a batch is large; 0: always in the event loop.
    digest_workers: int = 1
    # UDP listeners (GELF, JSON, syslog), each for one project.
    udp: list[DatagramListenerSettings] = field(default_factory=list)
    # GELF over TCP (NUL-delimited frames; formats other than gelf and json do not apply).
    tcp: list[DatagramListenerSettings] = field(default_factory=list)

    def check(self) -> None:
        if self.max_event_size > self.max_body_size:
            raise Invalid("max_event_size", "must not exceed ingest.max_body_size")
        if self.max_event_size < 1024:
            raise Invalid("max_event_size", "must be at least 1KiB")
        if not 0 <= self.digest_workers <= 16:
            raise Invalid("digest_workers", "must be between 0 and 16")
        if self.retention_days < 1:
            raise Invalid("retention_days", "must be at least 1")
        if self.max_events_per_issue < 1:
            raise Invalid("max_events_per_issue", "must be at least 1")
        if self.public_url is not None and not re.fullmatch(r"https?://[^/\s@]+(/\S*)?",
                                                             self.public_url):
            raise Invalid("public_url", "must be an http:// or https:// URL without "
                                        "credentials, e.g. \"https://errors.example.com\"")
        for name in ("api_token", "api_read_token"):
            token = getattr(self, name)
            if token is not None and len(token.reveal()) < 8:
                raise Invalid(name, "must be at least 8 characters long")
        if self.api_read_token is not None and self.api_token is None:
            raise Invalid("api_read_token", "needs ingest.api_token: the API is off "
                                            "without it")
        if (self.api_read_token is not None and self.api_token is not None
                and self.api_read_token.reveal() == self.api_token.reveal()):
            raise Invalid("api_read_token", "must differ from ingest.api_token")


def check_projects(projects: list[ProjectSettings]) -> Iterator[Invalid]:
    seen_ids: dict[int, str] = {}
    seen_names: set[str] = set()
    seen_keys: dict[str, str] = {}
    for i, project in enumerate(projects):
        if project.id in seen_ids:
            yield Invalid(f"projects[{i}].id", f"{project.id} is also the id of project "
                                               f"{seen_ids[project.id]!r}")
        if project.name in seen_names:
            yield Invalid(f"projects[{i}].name", f"{project.name!r} is used twice")
        for key in project.keys:
            if key in seen_keys:
                yield Invalid(f"projects[{i}].keys", f"{key!r} is also a key of project "
                                                     f"{seen_keys[key]!r}")
            seen_keys.setdefault(key, project.name)
        seen_ids[project.id] = project.name
        seen_names.add(project.name)
