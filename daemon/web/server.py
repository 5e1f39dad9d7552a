"""The one aiohttp application: health, readiness and metrics now; ingest and the
operator API mount their routes on it before it starts.

Runs inside egen's own loop (AppRunner + TCPSite), never in a thread; binds each
`http.listen` address, and port 0 picks a free port (tests read `addresses` back).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from daemon.logs import fields, get_logger
from daemon.metrics import CONTENT_TYPE_LATEST, render
from daemon.units import HostPort
from daemon.web.http_bounds import BoundedServer, HttpBounds

log = get_logger("http")

ReadinessCheck = Callable[[], Awaitable[tuple[bool, str]]]


class HttpServer:
    name = "http"

    def __init__(self, listen: list[HostPort], registry: CollectorRegistry,
                 *, shutdown_grace: float = 5.0, check_timeout: float = 3.0,
                 header_timeout: float = 10.0, body_timeout: float = 60.0,
                 max_connections_per_client: int = 256) -> None:
        self.listen = listen
        self.registry = registry
        self.bounds = HttpBounds(registry, header_timeout=header_timeout,
                                 body_timeout=body_timeout,
                                 max_per_client=max_connections_per_client)
        self.shutdown_grace = shutdown_grace
        self.check_timeout = check_timeout
        self.app = web.Application()
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_get("/metrics", self._metrics)
        self._checks: dict[str, ReadinessCheck] = {}
        self._runner: web.AppRunner | None = None
        self.addresses: list[HostPort] = []

    def add_readiness_check(self, name: str, check: ReadinessCheck) -> None:
        self._checks[name] = check

    async def start(self) -> None:
        # auto_decompress off: aiohttp would inflate request bodies without a size cap;
        # ingest undoes Content-Encoding itself, within ingest.max_body_size.
        self._runner = web.AppRunner(self.app, access_log=None, auto_decompress=False,
                                     shutdown_timeout=self.shutdown_grace)
        await self._runner.setup()
        # The listeners take their protocols from runner.server; see http_bounds.
        self._runner._server = BoundedServer(  # type: ignore[assignment]
            self._runner._server, self.bounds)  # type: ignore[arg-type]
        for address in self.listen:
            site = web.TCPSite(self._runner, address.host, address.port, reuse_address=True)
            await site.start()
            server = site._server  # aiohttp exposes bound sockets only through the server
            for sock in getattr(server, "sockets", None) or []:
                host, port = sock.getsockname()[:2]
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    self.addresses.append(HostPort(host, port))
        for bound in self.addresses:
            log.info("listening", extra=fields(proto="http", address=str(bound)))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.addresses = []

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        results = await asyncio.gather(*(self._run_check(c) for c in self._checks.values()))
        checks = {name: {"ok": ok, "detail": detail}
                  for name, (ok, detail) in zip(self._checks, results, strict=True)}
        ready = all(ok for ok, _ in results)
        return web.json_response({"status": "ready" if ready else "not ready", "checks": checks},
                                 status=200 if ready else 503)

    async def _run_check(self, check: ReadinessCheck) -> tuple[bool, str]:
        try:
            return await asyncio.wait_for(check(), self.check_timeout)
        except TimeoutError:
            return False, f"no answer within {self.check_timeout:g}s"
        except Exception as err:
            log.exception("readiness check failed")
            return False, f"{type(err).__name__}: {err}"

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = render(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
