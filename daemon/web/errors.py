"""Error pages and redirects of the web pages, with the same headers as every page."""

from __future__ import annotations

from aiohttp import web

from daemon.db.pool import UNAVAILABLE
from daemon.web import render

__all__ = ["UNAVAILABLE", "error_page", "redirect"]


def error_page(request: web.Request, status: int, title: str, detail: str) -> web.Response:
    return render.page(request, "error.html", {"status": status, "title": title,
                                               "detail": detail}, status=status)


def redirect(request: web.Request, location: str, *, status: int = 303) -> web.Response:
    """302 for a GET that should look elsewhere, 303 after a form (the browser follows
    with a GET, so reloading the page does not send the form again)."""
    response = web.Response(status=status, headers={"Location": location})
    render.finish(request, response)
    return response
