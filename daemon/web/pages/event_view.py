"""An event's JSON turned into what the event page shows: the exception chain with its
frames (in-app ones on their own, runs of library and `node:internal` frames folded into
one group), source context and local variables, breadcrumbs, the request, the user,
contexts, the SDK, tags and extra data.

Event JSON is whatever a client sent, so this is lenient like the normalizer, but never
rejects: a value of an unexpected shape is shown as JSON or left out, and every list and
text is cut to a bound so a huge event still renders as a page. The input is expected
to be masked already (daemon.web.pages.masking); nothing here escapes HTML, the templates do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson

MAX_TEXT = 4000
MAX_ITEMS = 200
MAX_FRAMES = 250
MAX_BREADCRUMBS = 200
_LIBRARY_MARKS = ("/node_modules/", "site-packages/", "dist-packages/", "<frozen ",
                  "/usr/lib/python", "/lib/python3")
_CONTEXT_ORDER = ("os", "runtime", "browser", "device", "app", "culture", "cloud_resource",
                  "trace")

Pairs = list[tuple[str, str]]


@dataclass
class FrameView:
    where: str                       # file or module
    function: str
    lineno: int | None
    colno: int | None
    in_app: bool
    context: list[tuple[int | None, str, bool]]   # (line number, text, is the frame's line)
    vars: Pairs


@dataclass
class FrameGroup:
    in_app: bool
    frames: list[FrameView]
    expanded: bool


@dataclass
class ExceptionView:
    type: str
    value: str
    module: str | None
    mechanism: str | None
    handled: bool | None
    groups: list[FrameGroup]          # most recent call first
    frame_count: int


@dataclass
class Breadcrumb:
    time: str | None                 # ISO 8601 UTC
    type: str
    category: str
    level: str
    message: str
    data: Pairs


@dataclass
class RequestView:
    url: str | None
    method: str | None
    query: Pairs
    headers: Pairs
    cookies: Pairs
    data: str | None
    env: Pairs


@dataclass
class EventView:
    message: str | None
    exceptions: list[ExceptionView]  # the one raised at top level first
    breadcrumbs: list[Breadcrumb]
    request: RequestView | None
    user: Pairs
    contexts: list[tuple[str, Pairs]]
    sdk: Pairs
    tags: Pairs
    extra: Pairs
    details: Pairs                   # platform, logger, server name, transaction, …


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """Any JSON value as one readable string: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        shown = value
    elif value is None:
        shown = "null"
    elif isinstance(value, bool | int | float):
        shown = orjson.dumps(value).decode() if isinstance(value, bool) else str(value)
    else:
        try:
            shown = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
                                 default=str).decode()
        except (TypeError, orjson.JSONEncodeError):
            shown = repr(value)
    return shown if len(shown) <= limit else shown[:limit - 1] + "…"


def _str(value: Any, limit: int = MAX_TEXT) -> str | None:
    if value is None or value == "":
        return None
    return text(value, limit)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def pairs(value: Any, limit: int = MAX_ITEMS) -> Pairs:
    """An object, or a list of [name, value] pairs, as (name, text) rows."""
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = [(p[0], p[1]) for p in value if isinstance(p, list | tuple) and len(p) == 2]
    return [(text(k, 200), text(v)) for k, v in items[:limit] if k is not None]


def _values(value: Any) -> list[Any]:
    """Sentry's `{"values": [...]}` or a bare list."""
    if isinstance(value, dict):
        value = value.get("values")
    return value if isinstance(value, list) else []


def _library(frame: dict[str, Any]) -> bool:
    path = str(frame.get("abs_path") or frame.get("filename") or "")
    return path.startswith(("node:", "internal/")) or any(m in path for m in _LIBRARY_MARKS)


def _frame(frame: dict[str, Any]) -> FrameView:
    in_app = frame.get("in_app")
    if not isinstance(in_app, bool) or (in_app and str(frame.get("filename") or "")
                                        .startswith("node:")):
        in_app = not _library(frame)
    lineno = _int(frame.get("lineno"))
    context: list[tuple[int | None, str, bool]] = []
    pre = [x for x in frame.get("pre_context") or [] if isinstance(x, str)][-20:] \
        if isinstance(frame.get("pre_context"), list) else []
    post = [x for x in frame.get("post_context") or [] if isinstance(x, str)][:20] \
        if isinstance(frame.get("post_context"), list) else []
    line = frame.get("context_line")
    if isinstance(line, str):
        start = lineno - len(pre) if lineno is not None else None
        for n, source in enumerate(pre):
            context.append((None if start is None else start + n, text(source, 500), False))
        context.append((lineno, text(line, 500), True))
        for n, source in enumerate(post, 1):
            context.append((None if lineno is None else lineno + n, text(source, 500), False))
    where = (_str(frame.get("filename"), 500) or _str(frame.get("abs_path"), 500)
             or _str(frame.get("module"), 500) or "<unknown>")
    return FrameView(where=where, function=_str(frame.get("function"), 500) or "?",
                     lineno=lineno, colno=_int(frame.get("colno")), in_app=in_app,
                     context=context, vars=pairs(frame.get("vars")))


def frame_groups(frames: list[Any]) -> list[FrameGroup]:
    """Frames most recent call first; each in-app frame on its own, each run of library
    frames as one group. Without any in-app frame, every frame shows."""
    views = [_frame(f) for f in frames if isinstance(f, dict)][-MAX_FRAMES:]
    views.reverse()
    any_app = any(v.in_app for v in views)
    groups: list[FrameGroup] = []
    for view in views:
        if view.in_app or not groups or groups[-1].in_app:
            groups.append(FrameGroup(view.in_app, [view], view.in_app or not any_app))
        else:
            groups[-1].frames.append(view)
    return groups


def _exception(value: dict[str, Any]) -> ExceptionView:
    mechanism = _obj(value.get("mechanism"))
    handled = mechanism.get("handled")
    frames = _obj(value.get("stacktrace")).get("frames")
    frames = frames if isinstance(frames, list) else []
    return ExceptionView(
        type=_str(value.get("type"), 500) or "Error", value=_str(value.get("value")) or "",
        module=_str(value.get("module"), 500), mechanism=_str(mechanism.get("type"), 100),
        handled=handled if isinstance(handled, bool) else None,
        groups=frame_groups(frames), frame_count=len(frames))


def _thread_trace(data: dict[str, Any]) -> ExceptionView | None:
    """A message event's own stack trace (top-level, or the crashed/current thread's)."""
    frames = _obj(data.get("stacktrace")).get("frames")
    if not isinstance(frames, list):
        for item in _values(data.get("threads")):
            thread = _obj(item)
            candidate = _obj(thread.get("stacktrace")).get("frames")
            if isinstance(candidate, list) and (thread.get("crashed") or thread.get("current")):
                frames = candidate
                break
    if not isinstance(frames, list) or not frames:
        return None
    return ExceptionView(type="Stack trace", value="", module=None, mechanism=None,
                         handled=None, groups=frame_groups(frames), frame_count=len(frames))


def _time(value: Any) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC).isoformat()
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(
                UTC).isoformat()
        except (ValueError, OverflowError):    # year 1 or 9999 shifted out of range
            return None
    return None


def _breadcrumbs(data: dict[str, Any]) -> list[Breadcrumb]:
    crumbs = [c for c in _values(data.get("breadcrumbs")) if isinstance(c, dict)]
    return [Breadcrumb(time=_time(c.get("timestamp")), type=_str(c.get("type"), 100) or "default",
                       category=_str(c.get("category"), 200) or "",
                       level=_str(c.get("level"), 20) or "info",
                       message=_str(c.get("message")) or "", data=pairs(c.get("data"), 50))
            for c in crumbs[-MAX_BREADCRUMBS:]]


def _query(value: Any) -> Pairs:
    if isinstance(value, str):
        return [(text(k, 200), text(v)) for k, v in
                parse_qsl(value, keep_blank_values=True)[:MAX_ITEMS]]
    return pairs(value)


def _cookies(value: Any) -> Pairs:
    if isinstance(value, str):
        found = [part.strip().partition("=") for part in value.split(";") if part.strip()]
        return [(text(k, 200), text(v)) for k, _, v in found[:MAX_ITEMS]]
    return pairs(value)


def _request(data: dict[str, Any]) -> RequestView | None:
    request = _obj(data.get("request"))
    if not request:
        return None
    body = request.get("data")
    return RequestView(url=_str(request.get("url"), 2000),
                       method=_str(request.get("method"), 20),
                       query=_query(request.get("query_string")),
                       headers=pairs(request.get("headers")),
                       cookies=_cookies(request.get("cookies")),
                       data=None if body in (None, "", {}, []) else text(body),
                       env=pairs(request.get("env")))


def _contexts(data: dict[str, Any]) -> list[tuple[str, Pairs]]:
    contexts = _obj(data.get("contexts"))
    names = sorted(contexts, key=lambda n: (_CONTEXT_ORDER.index(n)
                                            if n in _CONTEXT_ORDER else len(_CONTEXT_ORDER), n))
    shown = []
    for name in names[:50]:
        rows = [(k, v) for k, v in pairs(contexts[name], 50) if k != "type"]
        if rows:
            shown.append((text(name, 100), rows))
    return shown


def _sdk(data: dict[str, Any]) -> Pairs:
    sdk = _obj(data.get("sdk"))
    rows: Pairs = []
    if sdk.get("name"):
        rows.append(("name", text(sdk["name"], 200)))
    if sdk.get("version"):
        rows.append(("version", text(sdk["version"], 100)))
    integrations = sdk.get("integrations")
    if isinstance(integrations, list) and integrations:
        rows.append(("integrations", ", ".join(text(i, 100) for i in integrations[:100])))
    packages = [p for p in sdk.get("packages") or [] if isinstance(p, dict)] \
        if isinstance(sdk.get("packages"), list) else []
    if packages:
        rows.append(("packages", ", ".join(f"{text(p.get('name'), 100)} "
                                           f"{text(p.get('version'), 50)}"
                                           for p in packages[:50])))
    return rows


def _message(data: dict[str, Any]) -> str | None:
    logentry = data.get("logentry")
    if not isinstance(logentry, dict):
        logentry = data.get("message") if isinstance(data.get("message"), dict) else None
    if isinstance(logentry, dict):
        return _str(logentry.get("formatted")) or _str(logentry.get("message"))
    return _str(data.get("message"))


def build(data: Any) -> EventView:
    """The view of one event's (masked) JSON; a payload that is not an object gives an
    empty view."""
    data = _obj(data)
    exceptions = [_exception(v) for v in _values(data.get("exception")) if isinstance(v, dict)]
    exceptions.reverse()
    trace = None if exceptions else _thread_trace(data)
    details = [(label, value) for label, key in (
        ("platform", "platform"), ("logger", "logger"), ("server name", "server_name"),
        ("environment", "environment"), ("release", "release"), ("dist", "dist"),
        ("transaction", "transaction"), ("level", "level"))
        if (value := _str(data.get(key), 500)) is not None]
    return EventView(
        message=_message(data), exceptions=exceptions if trace is None else [trace],
        breadcrumbs=_breadcrumbs(data), request=_request(data), user=pairs(data.get("user")),
        contexts=_contexts(data), sdk=_sdk(data), tags=pairs(data.get("tags")),
        extra=pairs(data.get("extra")), details=details)
