"""The projects page: each project with its event and issue counts, its DSNs and the
lines that point an SDK or a log shipper at it; admins create projects and keys here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from daemon.events.dsn import dsn
from daemon.events.projects import add_key, add_project
from daemon.events.settings import DatagramListenerSettings, IngestSettings
from daemon.events.storage import queries
from daemon.units import HostPort
from daemon.web import render
from daemon.web.errors import redirect


class ProjectPages:
    def __init__(self, pool: Callable[[], asyncpg.Pool], ingest: Callable[[], IngestSettings],
                 listen: Callable[[], HostPort],
                 projects_changed: Callable[[], Awaitable[None]]) -> None:
        self._pool = pool
        # Ingest learns of a new project or key now, not at its next refresh, so the DSN
        # the page shows works at once.
        self._projects_changed = projects_changed
        self._ingest = ingest
        self._listen = listen

    def routes(self) -> list[tuple[str, str, Any, bool]]:
        return [("GET", "/projects", self.project_list, False),
                ("POST", "/projects", self.create_project, True),
                ("POST", "/projects/{id}/keys", self.create_key, True)]

    def _shippers(self, name: str) -> list[tuple[str, DatagramListenerSettings]]:
        ingest = self._ingest()
        return [("udp", u) for u in ingest.udp if u.project == name] + \
               [("tcp", t) for t in ingest.tcp if t.project == name]

    async def project_list(self, request: web.Request, *, problem: str | None = None,
                           status: int = 200) -> web.Response:
        projects = await queries.list_projects(self._pool())
        ingest = self._ingest()
        base = ingest.public_url.rstrip("/") if ingest.public_url \
            else f"http://{self._listen()}"
        for project in projects:
            project["dsns"] = [dsn(ingest.public_url, self._listen(), key, project["id"])
                               for key in project["keys"]]
            project["shippers"] = self._shippers(project["name"])
        return render.page(request, "projects.html", {
            "section": "projects", "projects": projects, "problem": problem,
            "base_url": base, "gelf_url": f"{base}/gelf"}, status=status)

    async def create_project(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        name = str(form.get("name") or "").strip()
        try:
            project = await add_project(self._pool(), name)
        except ValueError as err:
            return await self.project_list(request, problem=str(err), status=400)
        await self._projects_changed()
        return redirect(request, f"/projects#project-{project.id}")

    async def create_key(self, request: web.Request) -> web.StreamResponse:
        text = request.match_info["id"]
        project_id = int(text) if text.isdigit() and len(text) <= 10 else 0
        try:
            await add_key(self._pool(), project_id)
        except ValueError as err:
            return await self.project_list(request, problem=str(err), status=400)
        await self._projects_changed()
        return redirect(request, f"/projects#project-{project_id}")
