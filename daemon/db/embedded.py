"""A Postgres cluster that egen runs itself under its state dir when no `database.url` is set.

Synchronous on purpose: the daemon calls it through `asyncio.to_thread`, tests call it
directly. The cluster lives in `data_dir` (PGDATA itself), logs in `data_dir/log/`.
This module is the cluster's lifecycle; what it needs from the host (the run-as user when
root, server binaries, process and lock-file checks, and `EmbeddedPostgresError`, re-exported
here) lives in `pghost`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import stat
import threading
from pathlib import Path
from urllib.parse import quote

from daemon.db.pghost import (
    EmbeddedPostgresError,
    RunAs,
    choose_run_as,
    chown_tree,
    clear_stale_locks,
    grant_traverse,
    is_live_postgres,
    read_pid,
    run_tool,
    select_binaries,
    wait_gone,
)
from daemon.logs import fields, get_logger

log = get_logger("db")

SUPERUSER = "egen"
PORT = 5432  # only names the socket file; the cluster never listens on TCP
_SOCKET_NAME = f".s.PGSQL.{PORT}"
_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes including the terminating NUL
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_INCLUDE = "include 'egen.conf'"
_START_WAIT = 60


def _settings(socket_dir: Path) -> str:
    # unix_socket_directories is a comma-separated list: double-quote the path inside.
    sock = '"' + str(socket_dir).replace('"', '""') + '"'
    sock = sock.replace("'", "''")
    return f"""\
# Written by egen at every start of its embedded cluster: edits here are lost.
# Local overrides belong in postgresql.auto.conf (ALTER SYSTEM), which is read last.

# Unix socket only, in a directory (mode 0700) that only the cluster's owner (and root)
# can enter, so reaching the socket is the authentication: that is why pg_hba.conf uses
# `trust` for local connections. TCP is off and also rejected in pg_hba.conf.
listen_addresses = ''
port = {PORT}
unix_socket_directories = '{sock}'
unix_socket_permissions = 0700

max_connections = 100
shared_buffers = 32MB
work_mem = 4MB
maintenance_work_mem = 32MB
max_wal_size = 256MB
min_wal_size = 80MB

# Durability matters: acknowledged mail and events live here.
fsync = on
synchronous_commit = on
full_page_writes = on

cluster_name = 'egen'
logging_collector = on
log_directory = 'log'
log_filename = 'postgresql-%a.log'
log_truncate_on_rotation = on
log_rotation_age = 1d
log_rotation_size = 0
log_line_prefix = '%m [%p] %q%u@%d '
"""


class EmbeddedPostgres:
    """One Postgres cluster in `data_dir`, started and stopped by egen."""

    def __init__(self, data_dir: Path, *, database: str = "egen") -> None:
        if not _DB_NAME.match(database):
            raise EmbeddedPostgresError(f"invalid embedded database name {database!r}")
        self.data_dir = Path(os.path.abspath(data_dir))
        self.database = database
        self.log_dir = self.data_dir / "log"
        self._lock = threading.Lock()
        self._bin: Path | None = None
        self._run_as: RunAs | None = None
        self._dsn: str | None = None
        # True when start() found the server already running (left by a killed egen, or
        # started by the daemon while an operator verb runs) instead of starting it.
        self.adopted = False

    # -- public ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._postmaster_pid() is not None

    @property
    def socket_dir(self) -> Path:
        path = os.fsencode(str(self.data_dir / _SOCKET_NAME))
        if len(path) <= _MAX_SOCKET_PATH:
            return self.data_dir
        # Unix socket paths are limited to ~107 bytes, so a deep state dir cannot hold
        # the socket: use a short private directory derived from the data dir instead.
        # (Postgres touches its socket lock file hourly, so /tmp cleaners leave it alone.)
        digest = hashlib.sha256(os.fsencode(str(self.data_dir))).hexdigest()[:16]
        return Path("/tmp") / f"egen-pg-{digest}"

    def start(self) -> str:
        """Start (or adopt) the cluster, creating it and the database on first use."""
        with self._lock:
            if self._dsn is not None and self.running:
                return self._dsn
            try:
                self._prepare()
                if not (self.data_dir / "PG_VERSION").exists():
                    self._initdb()
                self._configure()
                pid = self._adopt()
                adopted = self.adopted = pid is not None
                if pid is None:
                    pid = self._start_server()
                self._ensure_database()
            except OSError as exc:  # our own file work: permissions, full disk, ...
                raise EmbeddedPostgresError(
                    f"embedded postgres: cannot prepare {self.data_dir}: {exc}"
                ) from exc
            self._dsn = (
                f"postgresql://{SUPERUSER}@/{self.database}"
                f"?host={quote(str(self.socket_dir), safe='')}&port={PORT}"
            )
            log.info(
                "embedded postgres started",
                extra=fields(data_dir=str(self.data_dir), pid=pid, adopted=adopted,
                             bin_dir=str(self._bin),
                             user=self._run_as.name if self._run_as else None),
            )
            return self._dsn

    def stop(self) -> None:
        """Fast shutdown; waits until the server is gone. No-op when it is not running."""
        with self._lock:
            self._dsn = None
            pid = self._postmaster_pid()
            if pid is None:
                return
            if self._bin is None:
                self._run_as = choose_run_as(self.data_dir)
                self._bin = select_binaries(self.data_dir, self._run_as, self.log_dir)
            self._shutdown(pid)
            if self.socket_dir != self.data_dir:
                with contextlib.suppress(OSError):
                    self.socket_dir.rmdir()  # only if empty, as Postgres leaves it
            log.info("embedded postgres stopped",
                     extra=fields(data_dir=str(self.data_dir), pid=pid))

    # -- setup ----------------------------------------------------------------------------

    def _prepare(self) -> None:
        self._run_as = choose_run_as(self.data_dir)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            grant_traverse(self.data_dir, self._run_as)
        created = not self.data_dir.exists()
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if self._run_as is not None:
            owner = self.data_dir.stat().st_uid
            if created or owner == 0:
                # Fresh dir, or one created by root (e.g. state-dir setup): hand it over.
                chown_tree(self.data_dir, self._run_as)
        self._bin = select_binaries(self.data_dir, self._run_as, self.log_dir)

    def _initdb(self) -> None:
        assert self._bin is not None
        rc, out = self._run(
            [str(self._bin / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
             "--auth-local=trust", "--auth-host=reject", "-E", "UTF8", "--no-locale",
             "--data-checksums"],
            timeout=300,
        )
        if rc != 0:
            raise self._failure("initdb failed", out)
        log.info("initialized embedded postgres cluster",
                 extra=fields(data_dir=str(self.data_dir), bin_dir=str(self._bin)))

    def _configure(self) -> None:
        """(Re)write egen.conf, include it, make the log and socket directories."""
        conf = self.data_dir / "postgresql.conf"
        if _INCLUDE not in conf.read_text(errors="replace"):
            # Appending keeps the file's owner; the include is last, so it wins.
            with conf.open("a") as f:
                f.write(f"\n# egen's settings, rewritten at every start\n{_INCLUDE}\n")
        tmp = self.data_dir / "egen.conf.tmp"
        tmp.write_text(_settings(self.socket_dir))
        os.chmod(tmp, 0o600)
        self._give(tmp)
        os.replace(tmp, self.data_dir / "egen.conf")
        self.log_dir.mkdir(mode=0o700, exist_ok=True)
        self._give(self.log_dir)
        if self.socket_dir != self.data_dir:
            self._prepare_socket_dir(self.socket_dir)

    def _prepare_socket_dir(self, path: Path) -> None:
        owner = self._run_as.uid if self._run_as else os.geteuid()
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
        # /tmp is shared: refuse a symlink or a directory someone else planted there.
        # (Root-owned is fine when we are root: we made it and are about to hand it over.)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid not in {owner, os.geteuid()}:
            raise EmbeddedPostgresError(
                f"socket directory {path} exists but is not a directory owned by uid {owner}; "
                "remove it"
            )
        os.chmod(path, 0o700)
        self._give(path)
        if self._run_as is not None:
            grant_traverse(path, self._run_as)

    def _give(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, self._run_as.uid, self._run_as.gid)

    # -- running --------------------------------------------------------------------------

    def _adopt(self) -> int | None:
        """The PID of a server already running on this cluster that we can use, if any."""
        assert self._bin is not None
        rc, out = self._run([str(self._bin / "pg_ctl"), "status", "-D", str(self.data_dir)],
                            timeout=30)
        m = re.search(r"PID: (\d+)", out)
        pid = int(m[1]) if rc == 0 and m else None
        if pid is not None and not is_live_postgres(pid):
            pid = None
        if pid is None:
            self._clear_stale_locks()
            return None
        status = ""
        with contextlib.suppress(OSError, IndexError):
            status = (self.data_dir / "postmaster.pid").read_text().split("\n")[7].strip()
        if status == "ready":
            # A daemon killed with SIGKILL leaves it behind; an operator verb finds the
            # running daemon's server here. Either way it is healthy and ours to use.
            log.info("embedded postgres already running; using it",
                        extra=fields(data_dir=str(self.data_dir), pid=pid))
            return pid
        # Still starting or already stopping: restart it rather than poll its state.
        log.warning("restarting embedded postgres left behind by a previous egen",
                    extra=fields(data_dir=str(self.data_dir), pid=pid, state=status or "unknown"))
        self._shutdown(pid)
        self._clear_stale_locks()
        return None

    def _shutdown(self, pid: int) -> None:
        """pg_ctl stop (fast, then immediate, then SIGKILL); returns once `pid` is gone."""
        assert self._bin is not None
        base = [str(self._bin / "pg_ctl"), "stop", "-D", str(self.data_dir), "-w",
                "-t", str(_START_WAIT)]
        for mode in ("fast", "immediate"):
            try:
                rc, out = self._run([*base, "-m", mode], timeout=_START_WAIT + 30)
            except EmbeddedPostgresError as exc:
                rc, out = -1, str(exc)
            # pg_ctl returns once postmaster.pid is gone; the process exits right after.
            if wait_gone(pid, 5.0 if rc == 0 else 0.0):
                break
            log.warning("postgres shutdown did not finish", extra=fields(
                data_dir=str(self.data_dir), mode=mode, output=out.strip()))
        else:
            log.error("postgres ignored shutdown, killing it",
                      extra=fields(data_dir=str(self.data_dir), pid=pid))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 10.0)

    def _clear_stale_locks(self) -> None:
        """Drop this cluster's lock files left by a dead (or PID-reused) server.

        Only called when pg_ctl says no server runs on this cluster.
        """
        clear_stale_locks((self.data_dir / "postmaster.pid",
                           self.socket_dir / f"{_SOCKET_NAME}.lock"))

    def _start_server(self) -> int:
        assert self._bin is not None
        before = self._log_sizes()
        rc, out = self._run(
            [str(self._bin / "pg_ctl"), "start", "-D", str(self.data_dir), "-w",
             "-t", str(_START_WAIT), "-l", str(self.log_dir / "startup.log")],
            timeout=_START_WAIT + 30,
        )
        pid = self._postmaster_pid()
        if rc != 0 or pid is None:
            raise self._failure("server did not start", out, self._new_log_lines(before))
        return pid

    def _ensure_database(self) -> None:
        exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")
        if "1" not in exists.split():
            self._psql(f'CREATE DATABASE "{self.database}"')
            log.info("created embedded database", extra=fields(database=self.database))

    def _psql(self, sql: str) -> str:
        assert self._bin is not None
        rc, out = self._run(
            [str(self._bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.socket_dir), "-p", str(PORT), "-U", SUPERUSER, "-d", "postgres",
             "-c", sql],
            timeout=60,
        )
        if rc != 0:
            raise self._failure("psql failed", out)
        return out

    def _postmaster_pid(self) -> int | None:
        pid = read_pid(self.data_dir / "postmaster.pid")
        return pid if pid is not None and is_live_postgres(pid) else None

    def _run(self, args: list[str], *, timeout: float) -> tuple[int, str]:
        """Run a Postgres tool (as the run user when root); returns (exit code, output)."""
        return run_tool(args, self._run_as, self.log_dir, timeout=timeout)

    def _failure(self, what: str, output: str, server_log: list[str] | None = None,
                 ) -> EmbeddedPostgresError:
        """A one-line error: what failed, the most telling line, where to read more."""
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        errors = [line for line in lines if "error:" in line.lower()]
        hint = errors[0] if errors else lines[-1] if lines else "no output"
        server_log = server_log or []
        fatal = [i for i, line in enumerate(server_log) if "FATAL:" in line or "PANIC:" in line]
        if fatal:
            i = fatal[-1]
            hint = server_log[i].strip()
            # "FATAL: configuration file contains errors" is explained by the line before.
            pid = re.search(r"\[\d+\]", server_log[i])
            if i > 0 and pid and pid[0] in server_log[i - 1] and "LOG:" in server_log[i - 1]:
                hint = f"{server_log[i - 1].strip()} / {hint}"
        log.error("embedded postgres failed", extra=fields(
            what=what, data_dir=str(self.data_dir), output=output.strip(),
            server_log="\n".join((server_log or [])[-20:])))
        where = f"logs: {self.log_dir}" if server_log else "full output in egen's log"
        return EmbeddedPostgresError(f"embedded postgres: {what}: {hint} ({where})")

    def _log_sizes(self) -> dict[Path, int]:
        with contextlib.suppress(OSError):
            return {p: p.stat().st_size for p in self.log_dir.iterdir()}
        return {}

    def _new_log_lines(self, before: dict[Path, int]) -> list[str]:
        """Server log lines written since `before` (a _log_sizes snapshot)."""
        lines: list[str] = []
        for path in sorted(self._log_sizes()):
            with contextlib.suppress(OSError), path.open("rb") as f:
                f.seek(before.get(path, 0))
                lines += f.read(1 << 20).decode(errors="replace").splitlines()
        return lines
