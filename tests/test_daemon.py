"""The daemon as operators run it: a child process with the embedded Postgres, systemd's
notify socket, signals, and the CLI's exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.daemonproc import DaemonProcess, NotifySocket, postgres_processes

pytestmark = pytest.mark.slow


def write_config(tmp_path: Path, extra: str = "") -> Path:
    state = tmp_path / "state"
    path = tmp_path / "egen.toml"
    path.write_text(f'state_dir = "{state}"\nhostname = "test.invalid"\ndrain_timeout = "20s"\n'
                    f'[http]\nlisten = ["127.0.0.1:0"]\n{extra}')
    return path


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


async def test_embedded_lifecycle_notify_reload_and_drain(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": str(notify.path),
                                        "WATCHDOG_USEC": "2000000"})
    try:
        await daemon.start()
        port = await daemon.http_port()
        ready = await notify.wait_for("READY=1")
        assert f"MAINPID={daemon.proc.pid}" in ready.split("\n")  # type: ignore[union-attr]
        await notify.wait_for("WATCHDOG=1")
        status, body = await get(port, "/readyz")
        assert status == 200, body
        assert postgres_processes(tmp_path / "state" / "postgres")

        # An operator verb shares the daemon's embedded Postgres and leaves it running.
        listed = await run_cli_async("nodes", "list", "--json", "--config", str(config))
        assert [n["pid"] for n in orjson.loads(listed)] == [daemon.proc.pid]  # type: ignore[union-attr]
        assert (await get(port, "/readyz"))[0] == 200

        config.write_text(config.read_text() + '[log]\nlevel = "debug"\n')
        daemon.signal(signal.SIGHUP)
        await daemon.wait_for_line(r"msg=reloaded")

        config.write_text(config.read_text() + "[bogus]\n")
        daemon.signal(signal.SIGHUP)
        await daemon.wait_for_line(r"msg=\"reload rejected\".*bogus: unknown key")
        assert (await get(port, "/healthz"))[0] == 200

        daemon.signal(signal.SIGTERM)
        await notify.wait_for("STOPPING=1")
        assert await daemon.wait() == 0
        assert postgres_processes(tmp_path / "state" / "postgres") == []
    finally:
        await daemon.close()
        notify.close()


async def test_restart_after_kill9_adopts_the_orphaned_postgres(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    first = DaemonProcess(config)
    second = DaemonProcess(config)
    try:
        await first.start()
        await first.http_port()
        await first.wait_for_line(r"msg=ready")
        first.signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        assert postgres_processes(tmp_path / "state" / "postgres"), "postgres outlived egen"

        await second.start()
        port = await second.http_port()
        assert (await get(port, "/readyz"))[0] == 200
        second.signal(signal.SIGTERM)
        assert await second.wait() == 0
        assert postgres_processes(tmp_path / "state" / "postgres") == []
    finally:
        await first.close()
        await second.close()


async def test_start_failure_exits_1_and_stops_postgres(tmp_path: Path) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    taken = blocker.sockets[0].getsockname()[1]
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{taken}"))
    daemon = DaemonProcess(config)
    try:
        await daemon.start()
        await daemon.wait_for_line(r"msg=\"start failed\"")
        assert await daemon.wait() == 1
        assert postgres_processes(tmp_path / "state" / "postgres") == []
    finally:
        blocker.close()
        await blocker.wait_closed()
        await daemon.close()


async def run_cli_async(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def test_operator_verb_without_daemon_starts_and_stops_postgres(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run_cli("nodes", "list", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ID", "VERSION", "STARTED_AT", "HEARTBEAT_AGE"]
    assert (tmp_path / "state" / "postgres" / "PG_VERSION").exists()
    assert postgres_processes(tmp_path / "state" / "postgres") == []


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})}, check=False)


@pytest.mark.parametrize(("body", "key"), [
    ('[http]\nlisne = ["127.0.0.1:1"]\n', "http.lisne: unknown key"),
    ('drain_timeout = "soon"\n', "drain_timeout: \"soon\" is not a duration"),
    ('[http]\nlisten = ["127.0.0.1:80", "0.0.0.0:99999"]\n',
     'http.listen[1]: "0.0.0.0:99999" is not a valid host:port'),
])
def test_check_config_errors_are_one_line_exit_2(tmp_path: Path, body: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{path}: ")
    assert key in line
    assert "Traceback" not in result.stderr


def test_check_config_json_reports_problems_as_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('databse = 1\n[http]\nlisten = ["0.0.0.0:99999"]\n')
    result = run_cli("check-config", "--json", "--config", str(path))
    assert result.returncode == 2 and result.stderr == ""
    answer = orjson.loads(result.stdout)
    assert answer["ok"] is False
    assert {p["key"] for p in answer["problems"]} == {"databse", "http.listen[0]"}
    assert all(p["file"] == str(path) and p["message"] for p in answer["problems"])


def test_check_config_reads_egen_config_and_prints_summary(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run_cli("check-config", env={"EGEN_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert "http://127.0.0.1:0" in result.stdout
    assert f"embedded Postgres in {tmp_path / 'state' / 'postgres'}" in result.stdout
    as_json = run_cli("check-config", "--json", "--config", str(config))
    summary = orjson.loads(as_json.stdout)
    assert summary["ok"] is True and "state_dir" in summary


def test_version_and_help() -> None:
    from daemon import __version__

    assert run_cli("--version").stdout.strip() == f"egen {__version__}"
    for verb in ([], ["run"], ["check-config"], ["nodes"], ["nodes", "list"]):
        result = run_cli(*verb, "--help")
        assert result.returncode == 0 and "usage: egen" in result.stdout
