"""The `[alerts]` section of egen.toml: channels (where alerts go), rules (which issue
changes of which projects go to which channels), and the limits that keep a bad deploy
from becoming an alert storm.

Channels are named and rules refer to them, so one team address or chat hook serves many
projects and has one rate limit, whatever the number of rules feeding it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

from daemon.events.settings import NAME_PATTERN, Level, check_name
from daemon.typedtoml import DURATION, Invalid, Secret, caught
from daemon.units import format_duration

Kind = Literal["new", "regressed", "spike", "critical"]
LEVELS = ("debug", "info", "warning", "error", "fatal")
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+")


@dataclass(frozen=True)
class ChannelSettings:
    name: str
    type: Literal["email", "webhook"]
    # email: the recipients.
    to: list[str] = field(default_factory=list)
    # webhook: where to POST (chat hook URLs are secrets: url_env / url_file work too),
    # the body's form, and the key of the X-Egen-Signature HMAC.
    url: Secret | None = None
    format: Literal["generic", "slack"] = "generic"
    secret: Secret | None = None
    # Messages per hour at most; alerts beyond it wait and go out folded into a digest.
    max_per_hour: int = 30

    def check(self) -> Iterator[Invalid]:
        yield from caught(check_name, self.name, "name")
        if self.max_per_hour < 1:
            yield Invalid("max_per_hour", "must be at least 1")
        if self.type == "email":
            if not self.to:
                yield Invalid("to", "an email channel needs at least one recipient")
            for i, address in enumerate(self.to):
                if not _ADDRESS.fullmatch(address):
                    yield Invalid(f"to[{i}]", f"{address!r} is not a mail address")
            if self.url is not None:
                yield Invalid("url", "is for webhook channels; this one is type = \"email\"")
        else:
            if self.url is None:
                yield Invalid("url", "a webhook channel needs a url")
            elif not re.fullmatch(r"https?://[^/\s]+(/\S*)?", self.url.reveal()):
                yield Invalid("url", "must be an http:// or https:// URL")
            if self.to:
                yield Invalid("to", "is for email channels; this one is type = \"webhook\"")


@dataclass(frozen=True)
class RuleSettings:
    # A project name, or "*" for every project.
    project: str
    on: list[Kind]
    channels: list[str]
    # spike: more than spike_events events of one issue within spike_window.
    spike_events: int = 0
    spike_window: Annotated[float, DURATION] = 300.0
    # critical: issues at or above this level, or whose exception type is listed
    # (matched with or without its module: "DatabaseError" matches
    # "psycopg.errors.DatabaseError"); alerted again while they go on, once per repeat.
    critical_level: Level | None = None
    critical_types: list[str] = field(default_factory=list)
    critical_repeat: Annotated[float, DURATION] = 3600.0

    @property
    def spike_key(self) -> str:
        return f"spike:{self.spike_events}/{int(self.spike_window)}"

    @property
    def critical_key(self) -> str:
        digest = hashlib.sha1(repr((self.critical_level, sorted(self.critical_types),
                                    self.critical_repeat)).encode()).hexdigest()[:10]
        return f"critical:{digest}"

    def applies_to(self, project: str) -> bool:
        return self.project in ("*", project)

    def is_critical(self, level: str, title: str) -> bool:
        """Whether an issue (its level and title, "Type: message") is critical here."""
        if self.critical_level is not None and level in LEVELS and \
                LEVELS.index(level) >= LEVELS.index(self.critical_level):
            return True
        if self.critical_types and ":" in title:
            name = title.split(":", 1)[0].strip()
            names = {name, name.rsplit(".", 1)[-1]}
            return any(t in names for t in self.critical_types)
        return False

    def check(self) -> Iterator[Invalid]:
        if self.project != "*" and not NAME_PATTERN.fullmatch(self.project):
            yield Invalid("project", f"{self.project!r} is neither a project name nor \"*\"")
        if not self.on:
            yield Invalid("on", "needs at least one of new, regressed, spike, critical")
        if len(set(self.on)) != len(self.on):
            yield Invalid("on", "lists a kind twice")
        if not self.channels:
            yield Invalid("channels", "needs at least one channel")
        if "spike" in self.on:
            if self.spike_events < 1:
                yield Invalid("spike_events", "a spike rule needs spike_events of 1 or more")
            if not 60 <= self.spike_window <= 86400 or self.spike_window % 60:
                yield Invalid("spike_window", "must be whole minutes, from 1m to 24h "
                                              f"(got {format_duration(self.spike_window)})")
        elif self.spike_events:
            yield Invalid("spike_events", "is for rules with \"spike\" in on")
        if "critical" in self.on:
            if self.critical_level is None and not self.critical_types:
                yield Invalid("critical_level", "a critical rule needs critical_level or "
                                                "critical_types")
            if self.critical_repeat < 60:
                yield Invalid("critical_repeat", "must be at least 1m")
        elif self.critical_level is not None or self.critical_types:
            yield Invalid("critical_level", "is for rules with \"critical\" in on")


@dataclass(frozen=True)
class AlertSettings:
    # From: of alert mail; unset: egen@<hostname>. Its domain wants a DKIM key.
    sender: str | None = None
    # After a message to a channel, alerts for it wait this long and go out as one digest.
    digest_window: Annotated[float, DURATION] = 60.0
    # One alert per issue and channel in this time at most (later ones are suppressed).
    per_issue_interval: Annotated[float, DURATION] = 1800.0
    # Webhook retries: the first after retry_first, doubling up to retry_max; a message
    # that failed max_attempts times is given up (and stays in `egen alerts log`).
    retry_first: Annotated[float, DURATION] = 30.0
    retry_max: Annotated[float, DURATION] = 3600.0
    max_attempts: int = 10
    webhook_timeout: Annotated[float, DURATION] = 10.0
    # How often each node looks for alert work it was not woken for (another node's
    # events, `egen alerts test`), seconds.
    poll_interval: Annotated[float, DURATION] = 2.0
    # How long alert history is kept.
    keep: Annotated[float, DURATION] = 30 * 86400.0
    # The built-in project the relay reports its own delivery failures to ("" turns the
    # reports off), and how old a message must be before its deferrals are reported
    # (shorter ones are greylisting and passing trouble, not news).
    relay_project: str = "egen-relay"
    relay_deferred_after: Annotated[float, DURATION] = 1800.0
    channels: list[ChannelSettings] = field(default_factory=list)
    rules: list[RuleSettings] = field(default_factory=list)

    # A bad channel or rule does not hide the other problems; a rule's channel names
    # are checked once the channels are readable.
    partial_check: ClassVar[dict[str, tuple[str, ...]]] = {"rules": ("channels",)}

    def channel(self, name: str) -> ChannelSettings | None:
        return next((c for c in self.channels if c.name == name), None)

    def check(self) -> Iterator[Invalid]:
        if self.sender is not None and not _ADDRESS.fullmatch(self.sender):
            yield Invalid("sender", f"{self.sender!r} is not a mail address")
        for name in ("digest_window", "per_issue_interval", "relay_deferred_after"):
            if getattr(self, name) < 0:
                yield Invalid(name, "must not be negative")
        if self.retry_first <= 0 or self.retry_max < self.retry_first:
            yield Invalid("retry_max", "retry_first must be positive and retry_max at least "
                                       "retry_first")
        if self.max_attempts < 1:
            yield Invalid("max_attempts", "must be at least 1")
        if self.poll_interval <= 0 or self.webhook_timeout <= 0:
            yield Invalid("poll_interval", "poll_interval and webhook_timeout must be positive")
        if self.relay_project:
            yield from caught(check_name, self.relay_project, "relay_project")
        seen: set[str] = set()
        for i, channel in enumerate(self.channels):
            if channel.name in seen:
                yield Invalid(f"channels[{i}].name", f"{channel.name!r} is used twice")
            seen.add(channel.name)
        for i, rule in enumerate(self.rules):
            for j, name in enumerate(rule.channels):
                if name not in seen:
                    known = ", ".join(sorted(seen)) or "none"
                    yield Invalid(f"rules[{i}].channels[{j}]",
                                  f"no channel named {name!r} (channels: {known})")
