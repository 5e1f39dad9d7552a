"""The web pages as one component: sets up the templates, mounts the pages behind the
sign-in guard and the static files (a stylesheet and a small script, no data, served
without a session so the sign-in page can use them), and syncs the config's users into
the database at start and on SIGHUP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files
from pathlib import Path

import asyncpg
from aiohttp import web

from daemon.db.pool import UNAVAILABLE
from daemon.events.settings import IngestSettings
from daemon.logs import fields, get_logger
from daemon.units import HostPort
from daemon.web import accounts, render
from daemon.web.auth import Auth
from daemon.web.pages.events import EventPages
from daemon.web.pages.issues import IssuePages
from daemon.web.pages.mail import MailPages
from daemon.web.pages.overview import OverviewPages
from daemon.web.pages.projects import ProjectPages
from daemon.web.settings import WebSettings

log = get_logger("web")

STATIC = Path(str(files("daemon.web") / "static"))


class WebUi:
    name = "web"

    def __init__(self, settings: WebSettings, pool: Callable[[], asyncpg.Pool], *,
                 ingest: Callable[[], IngestSettings], listen: Callable[[], HostPort],
                 projects_changed: Callable[[], Awaitable[None]]) -> None:
        self.settings = settings
        self._pool = pool
        self.auth = Auth(settings, pool)
        self.pages = [IssuePages(pool), EventPages(pool),
                      ProjectPages(pool, ingest, listen, projects_changed),
                      MailPages(pool), OverviewPages(pool)]

    def mount(self, app: web.Application) -> None:
        if not self.settings.enabled:
            return
        render.setup(app)
        self.auth.mount(app)
        for page in self.pages:
            for method, path, handler, admin in page.routes():
                app.router.add_route(method, path, self.auth.guard(handler, admin=admin))
        app.router.add_static("/static/", STATIC, name="static", append_version=True)

    async def start(self) -> None:
        await accounts.sync_config(self._pool(), self.settings.users)

    async def stop(self) -> None:
        return None

    async def reload(self, settings: WebSettings) -> None:
        try:
            await accounts.sync_config(self._pool(), settings.users)
        except (ValueError, asyncpg.PostgresError, *UNAVAILABLE) as err:
            log.error("web users reload failed; keeping the previous users",
                      extra=fields(error=f"{type(err).__name__}: {err}"))
            return
        self.settings = settings
        self.auth.reload(settings)
