"""Signing in and out, and the guard every page handler goes through.

No page, JSON view or download answers without a session: a GET without one is sent to
the sign-in page (and back afterwards), a POST without one too, a POST whose CSRF token
is missing or wrong is refused with 403 before the handler runs, so it changes nothing.
The sign-in form has its own CSRF token (a cookie and a hidden field that must agree),
so another site cannot sign a browser in either. Failed sign-ins are limited per user
name and per address (daemon.web.login_limit).

The session cookie is HttpOnly and SameSite=Lax, and Secure when the request came over
TLS or `web.secure_cookies` says egen sits behind a TLS proxy.
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

import asyncpg
from aiohttp import web

from daemon.events.storage.queries import QueryError
from daemon.logs import fields, get_logger
from daemon.web import accounts, login_limit, render, sessions
from daemon.web.errors import UNAVAILABLE, error_page, redirect
from daemon.web.settings import WebSettings

log = get_logger("web.auth")

SESSION_COOKIE = "egen_session"
LOGIN_COOKIE = "egen_login"
# Where to go after signing in, as the sign-in form sent it.
NEXT = web.RequestKey("egen.web.next", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") \
            or "\\" in target or any(ord(c) < 32 for c in target):
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


def _address(request: web.Request) -> str:
    return request.remote or ""


class Auth:
    def __init__(self, settings: WebSettings, pool: Callable[[], asyncpg.Pool]) -> None:
        self.settings = settings
        self._pool = pool
        self.limits = login_limit.Limits(settings.login_window,
                                         settings.login_failures_per_account,
                                         settings.login_failures_per_address)

    def reload(self, settings: WebSettings) -> None:
        self.settings = settings
        self.limits = login_limit.Limits(settings.login_window,
                                         settings.login_failures_per_account,
                                         settings.login_failures_per_address)

    def _secure(self, request: web.Request) -> bool:
        return self.settings.secure_cookies or request.secure

    async def session(self, request: web.Request) -> sessions.Session | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        return await sessions.lookup(self._pool(), token, idle=self.settings.session_idle,
                                     lifetime=self.settings.session_lifetime)

    def guard(self, handler: Handler, *, admin: bool = False) -> Handler:
        """`handler` behind a session (and, for POST, the session's CSRF token; with
        `admin`, an admin's session)."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            render.start_timer(request)
            try:
                session = await self.session(request)
                if session is None:
                    return self._to_login(request)
                request[render.SESSION] = session
                if request.method == "POST":
                    form = await request.post()
                    given = form.get("csrf_token")
                    if not isinstance(given, str) or not hmac.compare_digest(
                            given.encode(), session.csrf_token.encode()):
                        log.warning("form refused: CSRF token missing or wrong", extra=fields(
                            path=request.path, user=session.user, address=_address(request)))
                        return error_page(request, 403, "This form is not valid any more",
                                          "It was sent without the token egen puts in its "
                                          "own forms (or from a page older than your "
                                          "session). Go back, reload the page and try "
                                          "again.")
                if admin and not session.admin:
                    return error_page(request, 403, "Admins only",
                                      "Only admin users can do this.")
                return render.finish(request, await handler(request))
            except UNAVAILABLE as err:
                log.warning("page failed: database unavailable", extra=fields(
                    path=request.path, error=f"{type(err).__name__}: {err}"))
                return error_page(request, 503, "The database is not answering",
                                  "egen keeps accepting events and mail meanwhile. Reload "
                                  "in a moment.")
            except QueryError as err:
                return error_page(request, 400, "That request cannot be answered", str(err))

        return guarded

    def _to_login(self, request: web.Request) -> web.Response:
        """To the sign-in page, and back to this page afterwards (a form sent without a
        session is not replayed: after signing in, the user sends it again)."""
        if request.method != "GET" or request.path_qs == "/":
            return redirect(request, "/login")
        return redirect(request, f"/login?next={quote(safe_next(request.path_qs))}",
                        status=302)

    def mount(self, app: web.Application) -> None:
        app.router.add_get("/login", self.login_form)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.guard(self.logout))

    def _login_page(self, request: web.Request, *, error: str | None = None,
                    status: int = 200, name: str = "") -> web.Response:
        token = secrets.token_urlsafe(24)
        response = render.page(request, "login.html", {
            "error": error, "name": name, "login_token": token,
            "next": safe_next(request.query.get("next") or request.get(NEXT))},
            status=status)
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Lax", path="/login",
                            secure=self._secure(request), max_age=3600)
        return response

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        render.start_timer(request)
        try:
            if await self.session(request) is not None:
                return redirect(request, safe_next(request.query.get("next")), status=302)
        except UNAVAILABLE:
            pass                    # the form can still show; signing in will say more
        return self._login_page(request)

    async def login(self, request: web.Request) -> web.StreamResponse:
        render.start_timer(request)
        form = await request.post()
        name = str(form.get("name") or "").strip()[:256]
        password = str(form.get("password") or "")
        request[NEXT] = str(form.get("next") or "")
        given = form.get("login_token")
        expected = request.cookies.get(LOGIN_COOKIE)
        if not isinstance(given, str) or not expected or not hmac.compare_digest(
                given.encode(), expected.encode()):
            return self._login_page(request, status=403, name=name, error=(
                "The sign-in form had expired (or came from another site). Please try "
                "again."))
        if not name or not password:
            return self._login_page(request, status=400, name=name,
                                    error="Enter your user name and password.")
        address = _address(request)
        pool = self._pool()
        try:
            wait = await login_limit.blocked_for(pool, self.limits, name, address)
            if wait > 0:
                log.warning("sign-in refused: too many failures", extra=fields(
                    user=name, address=address, retry_after=math.ceil(wait)))
                response = self._login_page(request, status=429, name=name, error=(
                    f"Too many failed sign-ins. Try again in {_minutes(wait)}."))
                response.headers["Retry-After"] = str(math.ceil(wait))
                return response
            user = await accounts.authenticate(pool, name, password)
            if user is None:
                await login_limit.record_failure(pool, self.limits, name, address)
                log.info("sign-in failed", extra=fields(user=name, address=address))
                return self._login_page(request, status=200, name=name,
                                        error="Wrong user name or password.")
            await login_limit.clear(pool, name, address)
            await sessions.prune(pool, idle=self.settings.session_idle,
                                 lifetime=self.settings.session_lifetime)
            token = await sessions.create(pool, user.id, address=address,
                                          user_agent=request.headers.get("User-Agent", ""))
        except UNAVAILABLE as err:
            log.warning("sign-in failed: database unavailable", extra=fields(error=str(err)))
            return self._login_page(request, status=503, name=name, error=(
                "The database is not answering; try again in a moment."))
        log.info("signed in", extra=fields(user=name, address=address))
        response = redirect(request, safe_next(request[NEXT]))
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Lax", path="/",
                            secure=self._secure(request),
                            max_age=int(self.settings.session_lifetime))
        response.del_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session: sessions.Session = request[render.SESSION]
        await sessions.end(self._pool(), session)
        log.info("signed out", extra=fields(user=session.user, address=_address(request)))
        response = redirect(request, "/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response


def _minutes(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    return "a minute" if minutes <= 1 else f"{minutes} minutes"
