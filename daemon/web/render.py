"""How the pages are rendered and sent: the Jinja2 environment (autoescaped, undefined
names are errors), the filters the templates share (times, counts), the charts as
template globals, and the headers every page carries.

The headers: a Content-Security-Policy that allows only egen's own script and styles
(no inline script or style anywhere, so an event that smuggles markup past the escaping
still cannot run), no framing, no caching of pages with data, no referrer to other
sites, and `Server-Timing` with the time the handler took (what scripts/bench-web reads,
and what a browser's developer tools show).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from markupsafe import Markup, escape

from daemon.web.pages import charts

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STARTED = web.RequestKey("egen.web.started", float)
# The signed-in session (daemon.web.sessions.Session), set by the guard.
SESSION: web.RequestKey[Any] = web.RequestKey("egen.web.session", object)
NONE = "\u2013"           # an en dash where a value is missing


def _parse(value: str | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    when = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def utc_text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago_text(when: datetime, now: datetime | None = None) -> str:
    """'just now', '5 min ago', '3 h ago', '2 d ago', '4 mo ago', '2 y ago' (or 'in …')."""
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for size, unit in ((31536000, "y"), (2592000, "mo"), (86400, "d"), (3600, "h"),
                       (60, "min")):
        if seconds >= size:
            amount = f"{int(seconds // size)} {unit}"
            return f"in {amount}" if future else f"{amount} ago"
    return "just now"


def when(value: str | datetime | None) -> Markup:
    """An absolute time: UTC in the page, the viewer's local time once the script runs,
    UTC on hover either way."""
    parsed = _parse(value)
    if parsed is None:
        return Markup(NONE)
    iso = parsed.astimezone(UTC).isoformat()
    return Markup(f'<time datetime="{escape(iso)}" title="{escape(utc_text(parsed))}" '
                  f'data-local>{escape(parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"))}'
                  "</time>")


def ago(value: str | datetime | None) -> Markup:
    """A relative time ("3 h ago"), with the exact time on hover."""
    parsed = _parse(value)
    if parsed is None:
        return Markup(NONE)
    iso = parsed.astimezone(UTC).isoformat()
    return Markup(f'<time datetime="{escape(iso)}" title="{escape(utc_text(parsed))}" '
                  f'data-ago>{escape(ago_text(parsed))}</time>')


def number(value: int | None) -> str:
    """1234567 -> '1,234,567'; big counts get a short form on the list ('1.2M')."""
    return NONE if value is None else f"{value:,}"


def short_number(value: int | None) -> str:
    if value is None:
        return NONE
    for size, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if value >= size * 10:
            return f"{value / size:.0f}{suffix}"
        if value >= size:
            return f"{value / size:.1f}{suffix}"
    return str(value)


def percent(share: float) -> str:
    return f"{share * 100:.0f}%" if share >= 0.01 or share == 0 else "<1%"


def setup(app: web.Application) -> jinja2.Environment:
    env = aiohttp_jinja2.setup(
        app, loader=jinja2.PackageLoader("daemon.web", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=when, ago=ago, number=number, short_number=short_number,
                       percent=percent)
    env.globals.update(sparkline=charts.sparkline, bar_chart=charts.bar_chart,
                       share_bar=charts.share_bar)
    return env


def start_timer(request: web.Request) -> None:
    request[STARTED] = time.perf_counter()


def finish(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """The headers every page gets, and the time its handler took."""
    response.headers.update(HEADERS)
    started = request.get(STARTED)
    if started is not None:
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


def page(request: web.Request, template: str, context: dict[str, Any], *,
         status: int = 200) -> web.Response:
    context = {"session": request.get(SESSION), "section": "", "path": request.path_qs,
               **context}
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    finish(request, response)
    return response
