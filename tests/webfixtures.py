"""Helpers for web page tests: an egen with projects and web users, and a browser-like
HTTP client that signs in through the real form and sends the forms' CSRF tokens."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from daemon import config
from daemon.app import App
from daemon.passwords import hash_password
from tests.eventfixtures import base_url, events_config
from tests.mailfixtures import started_app

ADMIN, ADMIN_PASSWORD = "ada", "ada-password"
VIEWER, VIEWER_PASSWORD = "vic", "vic-password"

WEB_USERS = f"""
[web.users.{ADMIN}]
password_hash = "{hash_password(ADMIN_PASSWORD, ln=4)}"
admin = true
[web.users.{VIEWER}]
password_hash = "{hash_password(VIEWER_PASSWORD, ln=4)}"
"""

_HIDDEN = re.compile(r'<input type="hidden" name="(?P<name>[a-z_]+)" value="(?P<value>[^"]*)"')


def web_config(tmp_path: Path, pg_url: str, web: str = "", *, ingest: str = "",
               extra: str = "") -> config.Settings:
    """Settings with the two test users; `web` goes into the [web] section."""
    return events_config(tmp_path, pg_url, f"[web]\n{web}\n{WEB_USERS}\n{extra}",
                         ingest=ingest)


def hidden_fields(html: str) -> dict[str, str]:
    return {m["name"]: m["value"] for m in _HIDDEN.finditer(html)}


class Browser:
    """An aiohttp session that keeps cookies and does not follow redirects, so tests see
    where each answer sends them."""

    def __init__(self, app: App) -> None:
        self.base = base_url(app)
        self.session = aiohttp.ClientSession(
            self.base, cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], str]:
        async with self.session.get(path, allow_redirects=False, **kw) as response:
            return response.status, dict(response.headers), await response.text()

    async def post(self, path: str, data: dict[str, str], **kw: Any
                   ) -> tuple[int, dict[str, str], str]:
        async with self.session.post(path, data=data, allow_redirects=False, **kw
                                     ) as response:
            return response.status, dict(response.headers), await response.text()

    async def sign_in(self, name: str = ADMIN, password: str = ADMIN_PASSWORD,
                      *, next_path: str = "") -> tuple[int, dict[str, str], str]:
        """Fill in the sign-in form as a person would: load it, then send it."""
        status, _, page = await self.get("/login" + (f"?next={next_path}" if next_path
                                                     else ""))
        assert status == 200, page
        form = hidden_fields(page)
        return await self.post("/login", {**form, "name": name, "password": password})

    async def csrf(self, path: str = "/issues") -> str:
        """The CSRF token the pages put in their forms."""
        status, _, page = await self.get(path)
        assert status == 200, page
        return hidden_fields(page)["csrf_token"]

    def cookie(self, name: str) -> str | None:
        for morsel in self.session.cookie_jar:
            if morsel.key == name:
                return morsel.value
        return None


@contextlib.asynccontextmanager
async def browser(app: App, *, signed_in: str | None = ADMIN) -> AsyncIterator[Browser]:
    client = Browser(app)
    try:
        if signed_in is not None:
            password = {ADMIN: ADMIN_PASSWORD, VIEWER: VIEWER_PASSWORD}[signed_in]
            status, _, page = await client.sign_in(signed_in, password)
            assert status == 303, page
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def web_app(tmp_path: Path, pg_url: str, web: str = "", **kw: Any
                  ) -> AsyncIterator[App]:
    async with started_app(web_config(tmp_path, pg_url, web, **kw)) as app:
        yield app
