"""What the scripts/bench-* benchmarks share: egen as a child process (as in production:
its own process, uvloop, the journal on disk), its peak RSS, the URL of its embedded
Postgres, and a load run's figures."""

from __future__ import annotations

import asyncio
import re
import signal
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from daemon.db.embedded import PORT, SUPERUSER, EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"msg=listening proto=(\w+) address=127\.0\.0\.1:(\d+)")


class Egen:
    """`python -m daemon run` with its log read as it comes (the last lines kept for errors)."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.tail: list[str] = []
        self._pending = b""
        self._reader: asyncio.Task[None] | None = None
        self._line = asyncio.Condition()

    async def start(self, within: float) -> dict[str, int]:
        """Start egen; the first port of each protocol ("smtp", "http") once it logged
        `ready` (within seconds)."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", "--config", str(self.config), cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())
        await self.wait_for(r"msg=ready", within)
        ports: dict[str, int] = {}
        for line in self.tail:
            if match := _LISTENING.search(line):
                ports.setdefault(match[1], int(match[2]))
        return ports

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(1 << 16):
            *lines, self._pending = (self._pending + chunk).split(b"\n")
            async with self._line:
                self.tail = (self.tail + [x.decode(errors="replace") for x in lines])[-200:]
                self._line.notify_all()
        async with self._line:
            self._line.notify_all()

    async def wait_for(self, pattern: str, within: float) -> re.Match[str]:
        regex = re.compile(pattern)

        async def scan() -> re.Match[str]:
            async with self._line:
                while True:
                    for line in self.tail:
                        if match := regex.search(line):
                            return match
                    if self._reader is not None and self._reader.done():
                        raise RuntimeError("egen exited:\n" + "\n".join(self.tail[-30:]))
                    await self._line.wait()

        return await asyncio.wait_for(scan(), within)

    def errors(self) -> list[str]:
        return [line for line in self.tail if "level=error" in line or "Traceback" in line]

    async def stop(self) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return code


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a live process (its peak resident set), in MB; NaN once it is gone. Read
    it before the process stops."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def embedded_dsn(directory: Path) -> str:
    """The URL of the cluster egen runs under <directory>/state/postgres (a Unix socket)."""
    socket_dir = EmbeddedPostgres(directory / "state" / "postgres").socket_dir
    return f"postgresql://{SUPERUSER}@/egen?host={quote(str(socket_dir), safe='')}&port={PORT}"


@dataclass
class Run:
    """One load run: what was accepted, when, and how long each acknowledgement took."""

    accepted: int = 0
    refused: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    first_connect: float = 0.0
    last_accept: float = 0.0

    @property
    def rate(self) -> float:
        elapsed = self.last_accept - self.first_connect
        return self.accepted / elapsed if elapsed > 0 else 0.0

    def percentile(self, p: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=1000, method="inclusive")[
            int(p * 10) - 1]
