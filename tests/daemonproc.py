"""Runs `egen` as a child process for end-to-end tests: its log lines are read as they
come, so tests await events ("listening", "ready") instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from pathlib import Path


class DaemonProcess:
    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._new_line = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, *verb: str) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", *(verb or ("run",)), "--config", str(self.config),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=self.env)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            async with self._new_line:
                self.lines.append(line.decode(errors="replace").rstrip("\n"))
                self._new_line.notify_all()
        async with self._new_line:
            self._new_line.notify_all()

    async def wait_for_line(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        regex = re.compile(pattern)
        seen = 0

        async def scan() -> re.Match[str]:
            nonlocal seen
            async with self._new_line:
                while True:
                    for line in self.lines[seen:]:
                        if match := regex.search(line):
                            return match
                    seen = len(self.lines)
                    if self._reader is not None and self._reader.done():
                        raise AssertionError(f"egen exited before logging {pattern!r}:\n"
                                             + "\n".join(self.lines[-30:]))
                    await self._new_line.wait()

        return await asyncio.wait_for(scan(), timeout)

    async def http_port(self) -> int:
        match = await self.wait_for_line(r"msg=listening proto=http address=127\.0\.0\.1:(\d+)")
        return int(match.group(1))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class NotifySocket:
    """A stand-in for systemd's notify socket: receives READY=1, STOPPING=1, …"""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    async def receive(self, timeout: float = 60.0) -> str:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout)
        return data.decode()

    async def wait_for(self, word: str, timeout: float = 60.0) -> str:
        async def scan() -> str:
            while True:
                message = await self.receive(timeout)
                if word in message.split("\n"):
                    return message

        return await asyncio.wait_for(scan(), timeout)

    def close(self) -> None:
        self.sock.close()


def postgres_processes(data_dir: Path) -> list[int]:
    """PIDs of postgres processes whose command line mentions `data_dir`."""
    found = []
    needle = str(data_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"postgres" in cmdline and needle in cmdline:
            found.append(int(entry.name))
    return found
