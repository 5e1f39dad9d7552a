"""Host-level support for the embedded Postgres: the unprivileged user it runs as when egen is
root, finding and running usable server binaries, and telling a live postmaster from a stale lock
file, kept apart from `embedded.py` because it is about this machine's users, files and processes
rather than the cluster's lifecycle."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.logs import fields, get_logger

log = get_logger("db")

_REQUIRED = ("initdb", "pg_ctl", "postgres", "psql")


class EmbeddedPostgresError(Exception):
    """The embedded cluster could not be set up, started or stopped."""


# -- the run-as user ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account Postgres runs as when egen is root (Postgres refuses root)."""

    name: str
    uid: int
    gid: int
    home: str


def choose_run_as(data_dir: Path) -> RunAs | None:
    """None when not root; else the unprivileged user to run the cluster in `data_dir` as."""
    if os.geteuid() != 0:
        return None
    # An existing (cluster) dir keeps its owner; else the state dir's owner.
    for path in (data_dir, data_dir.parent):
        with contextlib.suppress(OSError):
            st = path.stat()
            if st.st_uid != 0:
                try:
                    pw = pwd.getpwuid(st.st_uid)
                    return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
                except KeyError:  # a bare uid (containers): use the dir's group
                    return RunAs(str(st.st_uid), st.st_uid, st.st_gid, "/")
    for name in ("egen", "postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            if pw.pw_uid != 0:
                return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
    raise EmbeddedPostgresError(
        "running as root and no unprivileged user to run the embedded Postgres as "
        f"(tried the owner of {data_dir.parent}, egen, postgres, nobody); "
        "create an 'egen' user or set database.url"
    )


def grant_traverse(path: Path, run_as: RunAs) -> None:
    """Let the run user reach `path`: add o+x to ancestors that lack it, and say so."""
    for anc in reversed(path.resolve().parents):
        st = anc.stat()
        if st.st_uid == run_as.uid:
            ok, cls = st.st_mode & stat.S_IXUSR, "owner"
        elif st.st_gid == run_as.gid:
            ok, cls = st.st_mode & stat.S_IXGRP, "group"
        else:
            ok, cls = st.st_mode & stat.S_IXOTH, "other"
        if ok:
            continue
        if cls != "other":  # o+x would not help: permissions are checked by class
            raise EmbeddedPostgresError(
                f"user {run_as.name} cannot enter {anc} (its {cls} bits lack x); "
                "fix the permissions or set database.url"
            )
        mode = stat.S_IMODE(st.st_mode) | stat.S_IXOTH
        os.chmod(anc, mode)
        log.warning("made directory traversable for the embedded postgres user",
                    extra=fields(path=str(anc), mode=oct(mode), user=run_as.name))


def chown_tree(top: Path, run_as: RunAs) -> None:
    """Hand `top` and everything below it to the run user (symlinks themselves, not targets)."""
    os.chown(top, run_as.uid, run_as.gid)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(os.path.join(root, name), run_as.uid, run_as.gid, follow_symlinks=False)


def run_tool(args: list[str], run_as: RunAs | None, log_dir: Path, *,
             timeout: float) -> tuple[int, str]:
    """Run a Postgres tool (as `run_as` when set); returns (exit code, output).

    `log_dir` is only named in the error when the tool times out.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    drop: dict[str, Any] = {}
    if run_as is not None:
        env.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name)
        drop = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    who = f" as user {run_as.name}" if run_as else ""
    # Output goes to a file, not a pipe: pg_ctl start leaves a daemon behind, and a
    # pipe it inherited would keep us waiting for EOF.
    with tempfile.TemporaryFile("w+", errors="replace") as out:
        try:
            proc = subprocess.run(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd="/", timeout=timeout, check=False, **drop,
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} {args[1]} did not finish within {timeout:g}s; "
                f"see {log_dir}"
            ) from None
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot run {args[0]}{who}: {exc}") from None
        out.seek(0)
        return proc.returncode, out.read()


# -- server binaries ------------------------------------------------------------------------


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in bin_dir.parent.name.split("."))
    except ValueError:
        return (-1,)


def _candidate_bin_dirs() -> list[Path]:
    """Directories holding a full set of server binaries, most preferred first."""
    dirs: list[Path] = []
    # Locate the pgserver wheel without importing it: importing creates runtime dirs.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    dirs.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True))
    on_path = shutil.which("pg_ctl")
    if on_path:
        dirs.append(Path(on_path).resolve().parent)
    unique = list(dict.fromkeys(dirs))
    return [d for d in unique if all((d / name).is_file() for name in _REQUIRED)]


def _major_version(text: str) -> str | None:
    """'pg_ctl (PostgreSQL) 16.2' -> '16'; '9.6.24' -> '9.6' (the PG_VERSION spelling)."""
    m = re.search(r"(\d+)(?:\.(\d+))?", text)
    if m is None:
        return None
    return m[1] if int(m[1]) >= 10 or m[2] is None else f"{m[1]}.{m[2]}"


def select_binaries(data_dir: Path, run_as: RunAs | None, log_dir: Path) -> Path:
    """The first binary set that matches the cluster's version and that `run_as` can run."""
    candidates = _candidate_bin_dirs()
    if not candidates:
        raise EmbeddedPostgresError(
            "no PostgreSQL server binaries found (pgserver wheel, /usr/lib/postgresql/*/bin, "
            "PATH); install egen's 'embedded' extra (pip install 'egen[embedded]') "
            "or set database.url"
        )
    want: str | None = None
    with contextlib.suppress(OSError):
        want = (data_dir / "PG_VERSION").read_text().strip()
    problems: list[str] = []
    for bin_dir in candidates:
        try:
            rc, out = run_tool([str(bin_dir / "postgres"), "--version"], run_as, log_dir,
                               timeout=30)
        except EmbeddedPostgresError as exc:
            problems.append(str(exc))
            continue
        version = _major_version(out)
        if rc != 0:
            problems.append(f"{bin_dir / 'postgres'} --version failed: {out.strip()[-200:]}")
        elif want is not None and version != want:
            problems.append(f"{bin_dir} is PostgreSQL {version}")
        else:
            return bin_dir
    if want is not None:
        raise EmbeddedPostgresError(
            f"the cluster in {data_dir} needs PostgreSQL {want} binaries, found none "
            f"usable ({'; '.join(problems)}); install PostgreSQL {want} or set database.url"
        )
    raise EmbeddedPostgresError(
        f"no usable PostgreSQL binaries ({'; '.join(problems)}); make them readable and "
        "executable by the user Postgres runs as (chmod -R o+rX), or set database.url"
    )


# -- processes and lock files ---------------------------------------------------------------


def is_live_postgres(pid: int) -> bool:
    """Whether pid is a running postgres process we could be talking about.

    A postmaster.pid left by a SIGKILLed server may name a PID that was since reused
    (containers restart PIDs from 1): such a process is alive but is not postgres.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process; our cluster runs as us (as pg_ctl reasons)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no procfs: trust kill()
    except OSError:
        return True
    argv0 = cmdline.split(b"\0", 1)[0]  # empty for a zombie
    return os.path.basename(argv0).startswith(b"postgres")


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether postgres `pid` has exited, waiting up to `timeout` seconds for it.

    It is not our child (pg_ctl daemonizes it), so there is nothing to wait() on: poll.
    """
    deadline = time.monotonic() + timeout
    while is_live_postgres(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def read_pid(lock_file: Path) -> int | None:
    """The PID on the first line of a Postgres lock file; None if unreadable."""
    try:
        first = lock_file.read_text(errors="replace").split("\n", 1)[0].strip()
        return int(first)
    except (OSError, ValueError):
        return None


def clear_stale_locks(locks: Iterable[Path]) -> None:
    """Remove lock files whose PID is gone or was reused by something else.

    Postgres itself ignores lock files of dead PIDs, but refuses to start when the PID
    is alive, and after a kill -9 in a container it often belongs to another process.
    Call only when pg_ctl says no server runs on the cluster the locks belong to.
    """
    for lock in locks:
        pid = read_pid(lock)
        if lock.exists() and (pid is None or not is_live_postgres(pid)):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            log.warning("removed stale postgres lock file",
                        extra=fields(path=str(lock), pid=pid))
