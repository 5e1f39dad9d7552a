"""egen.toml -> frozen, validated settings.

Defaults live on the dataclasses below (the README's configuration reference mirrors
them). Loading never half-succeeds: either every key is valid and a `Settings` comes back,
or `ConfigError` lists each problem as `file: dotted.key: what is wrong`.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from daemon.alerts.settings import AlertSettings
from daemon.dnssetup.settings import DnsSettings
from daemon.events.settings import IngestSettings, ProjectSettings, check_projects
from daemon.mail.delivery.routing import RouteSettings, check_routes
from daemon.mail.settings import DeliverySettings, DkimSettings, SmtpSettings
from daemon.typedtoml import DURATION, SIZE, Invalid, Issue, Loader, Secret, caught
from daemon.units import HostPort, format_duration, format_size
from daemon.urlmask import mask_url_password
from daemon.web.settings import WebSettings

DEFAULT_PATH = Path("/etc/egen/egen.toml")


@dataclass(frozen=True)
class LogSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["logfmt", "json"] = "logfmt"


@dataclass(frozen=True)
class DatabaseSettings:
    # Unset: egen runs an embedded Postgres under `<state_dir>/postgres`.
    url: Secret | None = None
    pool_min_size: int = 1
    pool_max_size: int = 10
    connect_timeout: Annotated[float, DURATION] = 10.0
    statement_timeout: Annotated[float, DURATION] = 30.0

    def check(self) -> None:
        if self.pool_min_size < 0:
            raise Invalid("pool_min_size", "must be 0 or more")
        if self.pool_max_size < max(1, self.pool_min_size):
            raise Invalid("pool_max_size", "must be at least 1 and at least pool_min_size")
        schemes = ("postgres://", "postgresql://")
        if self.url is not None and not self.url.reveal().startswith(schemes):
            raise Invalid("url", "must be a postgresql:// URL")


@dataclass(frozen=True)
class JournalSettings:
    # Each journal (one per kind of accepted item) may hold this much unconsumed data.
    max_size: Annotated[int, SIZE] = 1024 * 2**20
    segment_size: Annotated[int, SIZE] = 64 * 2**20

    def check(self) -> None:
        if self.segment_size < 4096:
            raise Invalid("segment_size", "must be at least 4KiB")
        if self.max_size < self.segment_size:
            raise Invalid("max_size", "must be at least journal.segment_size")


@dataclass(frozen=True)
class HttpSettings:
    listen: list[HostPort] = field(default_factory=lambda: [HostPort("127.0.0.1", 8800)])
    shutdown_grace: Annotated[float, DURATION] = 5.0
    # Time a connection has for each request head, and for the body once the head is
    # in; then 408 and close (see daemon.web.http_bounds).
    header_timeout: Annotated[float, DURATION] = 10.0
    body_timeout: Annotated[float, DURATION] = 60.0
    max_connections_per_client: int = 256

    def check(self) -> None:
        if not self.listen:
            raise Invalid("listen", "needs at least one address")
        for name in ("header_timeout", "body_timeout"):
            if getattr(self, name) <= 0:
                raise Invalid(name, "must be longer than 0s")
        if self.max_connections_per_client < 1:
            raise Invalid("max_connections_per_client", "must be at least 1")


@dataclass(frozen=True)
class Settings:
    state_dir: Path = Path("/var/lib/egen")
    hostname: str = field(default_factory=socket.getfqdn)
    drain_timeout: Annotated[float, DURATION] = 30.0
    log: LogSettings = field(default_factory=LogSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    journal: JournalSettings = field(default_factory=JournalSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    # Ordered; the first route whose domains match a recipient's domain carries it.
    routes: list[RouteSettings] = field(default_factory=list)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    # Error-tracking projects kept in the config (more can live in the database).
    projects: list[ProjectSettings] = field(default_factory=list)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    web: WebSettings = field(default_factory=WebSettings)
    # Where the settings came from; not a TOML key.
    source: Path = field(default=Path("<defaults>"), compare=False)

    # Each problem check() finds is about the field it names, so a bad section does not
    # hide the problems of the others.
    partial_check: ClassVar[bool] = True

    @property
    def base_url(self) -> str:
        """Where SDKs, operators and links in alerts reach egen's HTTP side."""
        return self.ingest.public_url or f"http://{self.http.listen[0]}"

    def check(self) -> Iterator[Invalid]:
        if self.drain_timeout <= 0:
            yield Invalid("drain_timeout", "must be positive")
        yield from caught(check_routes, self.routes)
        yield from check_projects(self.projects)


class ConfigError(Exception):
    def __init__(self, source: str, issues: list[Issue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.source}: {issue.key}: {issue.message}" if issue.key
                else f"{self.source}: {issue.message}" for issue in self.issues]


def resolve_path(explicit: str | None, environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if env.get("EGEN_CONFIG"):
        return Path(env["EGEN_CONFIG"])
    return DEFAULT_PATH


def load(path: Path, environ: dict[str, str] | None = None) -> Settings:
    """Read and validate one config file; raise ConfigError with every problem found."""
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(shown, [Issue("", "does not exist")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(shown, [Issue("", f"cannot be read: {err}")]) from None
    return loads(text, source=path, environ=environ)


def loads(text: str, *, source: Path, environ: dict[str, str] | None = None) -> Settings:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(source), [Issue("syntax error", str(err))]) from None
    if "source" in data:
        raise ConfigError(str(source), [Issue("source", "unknown key")])
    loader = Loader(base_dir=source.parent.resolve(), environ=environ)
    settings = loader.load(Settings, data)
    if loader.issues or settings is None:
        raise ConfigError(str(source), loader.issues)
    return _with_source(settings, source)


def _with_source(settings: Settings, source: Path) -> Settings:
    return replace(settings, source=source)


def summary(settings: Settings) -> list[tuple[str, str]]:
    """What `egen check-config` prints: where egen would listen and keep its data."""
    db = settings.database
    database = (mask_url_password(db.url.reveal()) if db.url is not None
                else f"embedded Postgres in {settings.state_dir / 'postgres'}")
    rows = [
        ("config", str(settings.source)),
        ("hostname", settings.hostname),
        ("state_dir", str(settings.state_dir)),
        ("database", database),
        ("journal", f"{settings.state_dir / 'journal'} "
                    f"(cap {format_size(settings.journal.max_size)} per journal)"),
        ("http", ", ".join(f"http://{a}" for a in settings.http.listen)),
        *_smtp_summary(settings),
        ("drain_timeout", format_duration(settings.drain_timeout)),
        ("log", f"{settings.log.level}, {settings.log.format}"),
    ]
    return rows


def _smtp_summary(settings: Settings) -> list[tuple[str, str]]:
    rows = []
    for listener in settings.smtp.listeners:
        trusted = ", ".join(listener.trusted_networks) or "none"
        rows.append(("smtp", f"{listener.listen} tls={listener.tls} auth={listener.auth} "
                             f"trusted={trusted}"))
    if settings.smtp.listeners:
        rows.append(("smtp users", ", ".join(sorted(settings.smtp.users)) or "none"))
    for key in settings.dkim.keys:
        rows.append(("dkim", f"{key.selector}._domainkey.{key.domain} ({key.algorithm}, "
                             f"{key.key_file})"))
    return rows
