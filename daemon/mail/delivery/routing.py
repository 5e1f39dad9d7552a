"""Which transport carries mail for a recipient domain: ordered `[[routes]]`, first
match wins. A config without a route for every domain is refused at start (the last
route must be "*"), so "no route" can never happen to a message in the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from daemon.typedtoml import Invalid, Secret


def _valid_pattern(pattern: str) -> bool:
    if pattern == "*":
        return True
    name = pattern[2:] if pattern.startswith("*.") else pattern
    labels = name.split(".")
    return bool(name) and "*" not in name and all(
        label and len(label) <= 63 and not label.startswith("-") and not label.endswith("-")
        for label in labels)


def domain_matches(pattern: str, domain: str) -> bool:
    """`example.com` matches itself; `*.example.com` its subdomains (not itself); `*` all."""
    domain = domain.lower().rstrip(".")
    pattern = pattern.lower()
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:])
    return domain == pattern


@dataclass(frozen=True)
class RouteSettings:
    domains: list[str]
    transport: Literal["mx", "smarthost", "maildir"] = "mx"
    # smarthost: where to hand the mail, and how.
    host: str | None = None
    port: int = 587
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    username: str | None = None
    password: Secret | None = None
    # mx and smarthost: refuse to deliver without TLS (defer instead).
    require_tls: bool = False
    # maildir: the Maildir (tmp/, new/, cur/) that receives the mail.
    path: Path | None = None

    def check(self) -> None:
        if not self.domains:
            raise Invalid("domains", 'list at least one domain pattern ("example.com", '
                          '"*.example.com" or "*")')
        for i, pattern in enumerate(self.domains):
            if not _valid_pattern(pattern):
                raise Invalid(f"domains[{i}]", f'"{pattern}" is not a domain pattern (use '
                              '"example.com", "*.example.com" or "*")')
        if self.transport == "smarthost" and not self.host:
            raise Invalid("host", "a smarthost route needs host")
        if self.transport == "maildir" and self.path is None:
            raise Invalid("path", "a maildir route needs path")
        if (self.username is None) != (self.password is None):
            raise Invalid("password" if self.password is None else "username",
                          "username and password go together")
        if self.username is not None and self.transport != "smarthost":
            raise Invalid("username", "only smarthost routes authenticate")
        if not 1 <= self.port <= 65535:
            raise Invalid("port", "must be between 1 and 65535")


@dataclass(frozen=True)
class Route:
    index: int
    settings: RouteSettings

    @property
    def key(self) -> str:
        return f"route{self.index}:{self.settings.transport}"


@dataclass
class Router:
    routes: list[RouteSettings] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.routes:
            self.routes = [RouteSettings(domains=["*"])]

    def route(self, domain: str) -> Route:
        for index, settings in enumerate(self.routes):
            if any(domain_matches(p, domain) for p in settings.domains):
                return Route(index, settings)
        raise LookupError(f"no route for {domain}")  # excluded by check_routes at start


def check_routes(routes: list[RouteSettings]) -> None:
    """Config check: some route must match every domain."""
    if routes and not any("*" in r.domains for r in routes):
        raise Invalid("routes", 'no route matches every domain: end with a route whose '
                      'domains = ["*"]')
