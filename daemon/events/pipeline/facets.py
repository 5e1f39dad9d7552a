"""What an event contributes to its issue's facets: the tag values counted per issue
(environment, release, server_name, browser, os, runtime, device, handled, url, custom
tags) and the user it affected, as the pages show them ("users affected", tag bars).

Computed once at acceptance, like the fingerprint, and carried in the journal record, so
the batch writer only copies them. Event JSON comes from every kind of client, so nothing
here raises: a value of the wrong shape is left out. Browser events carry no browser or
os context of their own; as Relay does, they are read from the User-Agent header of the
event's request, with ua-parser (the uap-core rules Relay uses), cached because a site's
visitors send few distinct agents.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from daemon.events.pipeline.eventtext import truncate
from daemon.events.pipeline.model import Event

MAX_TAGS = 64          # per event; built-in ones first, then custom tags in order
MAX_KEY = 64
MAX_VALUE = 200        # Sentry's limit for tag values
MAX_USER_FIELD = 256
_AUTO_IP = "{{auto}}"


@dataclass(frozen=True, slots=True)
class UserIdentity:
    """The user an event names. `key` is the first of id, username, email and ip address
    it has, prefixed with which one it is (Sentry's `user` tag), so one person counts once
    per issue however many of the fields each event carries."""

    key: str
    id: str | None
    email: str | None
    username: str | None
    ip_address: str | None


@dataclass(frozen=True, slots=True)
class Facets:
    tags: tuple[tuple[str, str], ...]
    user: UserIdentity | None


def _text(value: Any, limit: int = MAX_VALUE) -> str | None:
    """A scalar as tag text; None for missing, empty, structured or NUL-bearing values."""
    if (type(value) is str and value and len(value) <= limit and not value[0].isspace()
            and not value[-1].isspace() and "\x00" not in value):
        return value                # the common case, without copies (once per tag)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or "\x00" in value:
        return None
    return truncate(value, limit)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _name_version(context: dict[str, Any]) -> tuple[str | None, str | None]:
    """(name, "name version") of a browser, os or runtime context."""
    name = _text(context.get("name"))
    if name is None:
        return None, None
    version = _text(context.get("version"))
    return name, truncate(f"{name} {version}", MAX_VALUE) if version else name


def _header(headers: Any, wanted: str) -> str | None:
    """A request header from Sentry's object or list-of-pairs form, ignoring case."""
    pairs = (headers.items() if isinstance(headers, dict)
             else [p for p in headers if isinstance(p, list) and len(p) == 2]
             if isinstance(headers, list) else [])
    for name, value in pairs:
        if isinstance(name, str) and name.lower() == wanted and isinstance(value, str):
            return value
    return None


@functools.lru_cache(maxsize=1024)
def _agent(user_agent: str) -> tuple[tuple[str, str] | None, tuple[str, str] | None,
                                     str | None]:
    """((name, name and version) of the browser, the same of the OS, the device) a
    User-Agent header stands for; None where unknown."""
    from ua_parser import parse  # noqa: PLC0415 - loading its rules takes a while

    result = parse(user_agent)

    def version(*parts: str | None) -> str:
        return ".".join(p for p in parts if p)

    browser = os_name = device = None
    if result.user_agent is not None and result.user_agent.family != "Other":
        ua = result.user_agent
        browser = (ua.family, f"{ua.family} {version(ua.major, ua.minor)}".strip())
    if result.os is not None and result.os.family != "Other":
        os_name = (result.os.family,
                   f"{result.os.family} {version(result.os.major, result.os.minor)}".strip())
    if result.device is not None and result.device.family not in ("Other", ""):
        device = result.device.family
    return browser, os_name, device


def warm_up() -> None:
    """Load ua-parser's rules ahead of the first browser event (it takes ~0.2 s); call it
    in a thread at start, not on the event loop."""
    _agent("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/120.0 Safari/537.36")


def _contexts(data: dict[str, Any], tags: dict[str, str]) -> None:
    contexts = _object(data.get("contexts"))
    for kind in ("browser", "os", "runtime"):
        name, full = _name_version(_object(contexts.get(kind)))
        if name is None and kind == "os":
            name, full = _name_version(_object(contexts.get("client_os")))
        if full is not None and name is not None:
            tags.setdefault(kind, full)
            tags.setdefault(f"{kind}.name", name)
    device = _object(contexts.get("device"))
    model = _text(device.get("model")) or _text(device.get("family"))
    if model is not None:
        tags.setdefault("device", model)
    if "browser" in tags and "os" in tags:
        return
    agent = _header(_object(data.get("request")).get("headers"), "user-agent")
    if agent is None or len(agent) > 1024:
        return
    browser, os_name, device_name = _agent(agent)
    for key, named in (("browser", browser), ("os", os_name)):
        if named is not None and key not in tags:
            tags[key] = truncate(named[1], MAX_VALUE)
            tags[f"{key}.name"] = truncate(named[0], MAX_VALUE)
    if device_name and "device" not in tags:
        tags["device"] = truncate(device_name, MAX_VALUE)


def _mechanism(event: Event, data: dict[str, Any], tags: dict[str, str]) -> None:
    """`handled` and `mechanism` of the exception raised at top level."""
    if not event.exceptions:
        return
    exception = data.get("exception")
    values = exception.get("values", [exception]) if isinstance(exception, dict) \
        else exception
    # The top-level exception as the normalizer picks it: the last object in the list
    # (a bare exception object counts as a list of one; nulls are skipped).
    raised = [v for v in values if isinstance(v, dict)] if isinstance(values, list) else []
    if not raised:
        return
    mechanism = _object(raised[-1].get("mechanism"))
    handled = mechanism.get("handled")
    if isinstance(handled, bool):
        tags["handled"] = "yes" if handled else "no"
    kind = _text(mechanism.get("type"))
    if kind is not None:
        tags["mechanism"] = kind


_URL_REMOVED = str.maketrans("", "", "\t\r\n")


def _url(data: dict[str, Any]) -> str | None:
    """The request URL without its query and fragment (which may carry tokens)."""
    url = _text(_object(data.get("request")).get("url"), 2048)
    if url is None:
        return None
    if url.isascii() and not any(c in url for c in "?#[]\t\r\n"):
        return truncate(url, MAX_VALUE)
    try:
        urlsplit(url)           # refuses what is no URL, such as an unclosed "[" host
    except ValueError:
        return None
    # Cut from the text rather than rebuilt with geturl(), which drops an empty "//"
    # authority and would make "//" and "" the same tag; tabs and line ends go as
    # urlsplit drops them.
    kept = url.translate(_URL_REMOVED).split("#", 1)[0].split("?", 1)[0].strip()
    return truncate(kept, MAX_VALUE) or None


def user_identity(data: dict[str, Any], client_ip: str | None = None) -> UserIdentity | None:
    """The event's user; `client_ip` stands in for `ip_address: "{{auto}}"` (what browser
    SDKs send to have the ingest fill in the sender's address)."""
    user = _object(data.get("user"))
    if not user:
        return None
    fields = {name: _text(user.get(name), MAX_USER_FIELD)
              for name in ("id", "username", "email", "ip_address")}
    if fields["ip_address"] == _AUTO_IP:
        fields["ip_address"] = _text(client_ip, MAX_USER_FIELD)
    for name in ("id", "username", "email", "ip_address"):
        value = fields[name]
        if value is not None:
            prefix = "ip" if name == "ip_address" else name
            return UserIdentity(truncate(f"{prefix}:{value}", MAX_USER_FIELD), fields["id"],
                                fields["email"], fields["username"], fields["ip_address"])
    return None


def facets(event: Event, client_ip: str | None = None) -> Facets:
    data = event.payload
    tags: dict[str, str] = {"level": event.level}
    for key, value in (("environment", event.environment), ("release", event.release),
                       ("server_name", event.server_name), ("logger", event.logger),
                       ("transaction", event.transaction), ("url", _url(data))):
        text = _text(value)
        if text is not None:
            tags[key] = text
    _mechanism(event, data, tags)
    _contexts(data, tags)
    for key, value in event.tags:
        if len(tags) >= MAX_TAGS:
            break
        name = _text(key, MAX_KEY)
        text = _text(value)
        if name is not None and text is not None:
            tags.setdefault(name, text)
    return Facets(tuple(tags.items()), user_identity(data, client_ip))
