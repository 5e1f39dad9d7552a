"""The error tracker's operator verbs (`egen issues ...`, `egen project ...`) run as
processes against a real Postgres, as an operator runs them, and the DSN builder."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import orjson
import pytest

from daemon.cli.events import add_events_verbs
from daemon.config import ConfigError
from daemon.db import Database, DatabaseError
from daemon.events.dsn import dsn
from daemon.units import HostPort
from tests.test_events_queries import TRACE_EVENT, event, open_events_database, seed, store

ROOT = Path(__file__).resolve().parent.parent


def main(argv: Sequence[str]) -> int:
    """`egen` with only the error-tracker verbs, dispatched as daemon.cli.dispatch.main does."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="egen", parents=[common])
    add_events_verbs(parser.add_subparsers(dest="verb", required=True), common)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as err:
        sys.stderr.write("\n".join(err.lines()) + "\n")
        return 2
    except DatabaseError as err:
        sys.stderr.write(f"egen: {err}\n")
        return 1


async def egen(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import sys; from tests.test_cli_events import main; sys.exit(main(sys.argv[1:]))",
        *args, "--config", str(config), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def ok(result: tuple[int, str, str]) -> str:
    rc, out, err = result
    assert rc == 0, err
    return out


@pytest.fixture
async def db(pg_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_events_database(pg_url, tmp_path)
    yield database
    await database.stop()


@pytest.fixture
def config(pg_url: str, tmp_path: Path) -> Path:
    """Listening on IPv6 only, no public_url, one project kept in the config."""
    path = tmp_path / "egen.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n'
                    f'[database]\nurl = "{pg_url}"\n'
                    '[http]\nlisten = ["[::1]:8800", "127.0.0.1:8801"]\n'
                    '[[projects]]\nname = "cfg"\nid = 10\nkeys = ["cfgkey1"]\n')
    return path


@pytest.fixture
def public(pg_url: str, tmp_path: Path) -> Path:
    path = tmp_path / "public.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n'
                    f'[database]\nurl = "{pg_url}"\n'
                    '[ingest]\npublic_url = "https://errors.example.com/egen/"\n')
    return path


# -- DSNs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("public_url", "listen", "expected"), [
    (None, HostPort("127.0.0.1", 8800), "http://k3y@127.0.0.1:8800/4"),
    (None, HostPort("::1", 8800), "http://k3y@[::1]:8800/4"),
    (None, HostPort("errors.internal", 80), "http://k3y@errors.internal:80/4"),
    ("https://errors.example.com", HostPort("::", 1), "https://k3y@errors.example.com/4"),
    ("https://errors.example.com/", HostPort("::", 1), "https://k3y@errors.example.com/4"),
    ("http://errors.example.com:8080/sentry/",
     HostPort("::", 1), "http://k3y@errors.example.com:8080/sentry/4"),
    ("HTTPS://[2001:db8::5]:8443/a/b", HostPort("::", 1), "https://k3y@[2001:db8::5]:8443/a/b/4"),
])
def test_dsn(public_url: str | None, listen: HostPort, expected: str) -> None:
    assert dsn(public_url, listen, "k3y", 4) == expected


# -- issues ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_issues_list(db: Database, config: Path) -> None:
    i = await seed(db)
    await db.pool.execute("UPDATE issues SET status = 'ignored' WHERE id = $1", i["old"])
    default, every, filtered, by_count, text, unknown, too_many, bad_status = (
        await asyncio.gather(
            egen(config, "issues", "list", "--json"),
            egen(config, "issues", "list", "--json", "--status", "all"),
            egen(config, "issues", "list", "--json", "--project", "app", "--level", "error",
                 "--environment", "production", "--query", "DIVISION"),
            egen(config, "issues", "list", "--json", "--sort", "count", "--limit", "1"),
            egen(config, "issues", "list"),
            egen(config, "issues", "list", "--project", "nope"),
            egen(config, "issues", "list", "--limit", "1001"),
            egen(config, "issues", "list", "--status", "open")))
    listed = orjson.loads(ok(default))
    assert [issue["id"] for issue in listed] == [i["new"], i["web"], i["busy"]]
    assert {k: listed[0][k] for k in ("project", "title", "level", "status", "count")} == {
        "project": "app", "title": "Timeout: 100% of 5s used", "level": "info",
        "status": "unresolved", "count": 1}
    assert all(isinstance(listed[0][k], str) for k in ("first_seen", "last_seen"))
    assert [issue["id"] for issue in orjson.loads(ok(every))] == [
        i["new"], i["web"], i["busy"], i["old"]]
    assert [issue["id"] for issue in orjson.loads(ok(filtered))] == [i["busy"]]
    assert [issue["id"] for issue in orjson.loads(ok(by_count))] == [i["busy"]]
    header, *rows = ok(text).splitlines()
    assert header.split() == ["ID", "SHORT_ID", "LEVEL", "STATUS", "COUNT", "LAST_SEEN",
                              "PROJECT", "TITLE"]
    # One batch numbers its new issues in the order it inserts them (by fingerprint).
    assert rows[2].split()[:5] == [str(i["busy"]), "APP-1", "error", "unresolved", "3"]
    assert rows[2].endswith("app      ZeroDivisionError: division by zero")
    assert unknown == (1, "", "egen: project: no project named 'nope'\n")
    assert too_many == (2, "", "egen: limit: must be between 1 and 1000\n")
    assert bad_status[0] == 2 and "invalid choice: 'open'" in bad_status[2]


@pytest.mark.slow
async def test_issues_show(db: Database, config: Path) -> None:
    now = time.time()
    stored = [event("t", data={"message": "older"}, received=now - 20),
              event("t", data=TRACE_EVENT, title="LookupFailed: no user", received=now - 10),
              event("t", data=TRACE_EVENT, title="LookupFailed: no user", received=now)]
    await store(db, *stored[:2])
    issue_id = await db.pool.fetchval("SELECT id FROM issues")
    await db.pool.execute("UPDATE issues SET status = 'resolved', resolved_at = now()")
    await store(db, stored[2])
    text, as_json, one, missing, negative, by_short_id = await asyncio.gather(
        egen(config, "issues", "show", str(issue_id)),
        egen(config, "issues", "show", str(issue_id), "--json"),
        egen(config, "issues", "show", str(issue_id), "--json", "--events", "1"),
        egen(config, "issues", "show", "999"),
        egen(config, "issues", "show", str(issue_id), "--events", "-1"),
        egen(config, "issues", "show", "app-1"))
    out = ok(text)
    assert ok(by_short_id) == out
    blocks = out.split("\n\n")
    assert blocks[0] == "APP-1 LookupFailed: no user"
    details = {key: value.strip() for key, value in
               (line.split(":", 1) for line in blocks[1].splitlines())}
    for seen in (details.pop("first seen"), details.pop("last seen")):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+0000", seen)
    assert details == {
        "project": "app (id 1)", "culprit": "app.views in index", "level": "error",
        "status": "unresolved (regressed)", "events": "3", "environment": "production",
        "release": "1.0"}
    assert blocks[2:5] == [
        'Traceback (most recent call last):\n'
        '  File "app/db.py", line 7, in load\n'
        "    return rows['user']\n"
        "KeyError: 'user'",
        "The above exception led to the following exception:",
        'Traceback (most recent call last):\n'
        '  File "app/views.py", line 12, in index\n'
        "    user = load()\n"
        '  File "/srv/app/db.py", line ?, in wrap\n'
        "app.errors.LookupFailed: no user"]
    header, *rows = blocks[5].splitlines()
    assert header.split() == ["EVENT_ID", "RECEIVED_AT", "LEVEL", "ENVIRONMENT", "RELEASE"]
    assert [row.split()[0] for row in rows] == [e.event_id for e in reversed(stored)]
    issue = orjson.loads(ok(as_json))
    assert (issue["id"], issue["count"], len(issue["events"])) == (issue_id, 3, 3)
    assert [e["type"] for e in issue["stacktrace"]] == ["KeyError", "LookupFailed"]
    assert issue["events"][-1]["data"]["message"] == "older"
    assert len(orjson.loads(ok(one))["events"]) == 1
    assert missing == (1, "", "egen: no issue with id 999\n")
    assert negative == (2, "", "egen: events: must be between 0 and 1000\n")


@pytest.mark.slow
async def test_issue_status_verbs(db: Database, config: Path) -> None:
    await store(db, event("f"))
    issue_id = await db.pool.fetchval("SELECT id FROM issues")
    title = "ZeroDivisionError: division by zero"
    for verb, status in [("resolve", "resolved"), ("ignore", "ignored"),
                         ("reopen", "unresolved")]:
        assert ok(await egen(config, "issues", verb, str(issue_id))) == (
            f"issue {issue_id} is {status}: {title}\n")
        assert await db.pool.fetchval("SELECT status FROM issues") == status
    as_json = orjson.loads(ok(await egen(config, "issues", "resolve", str(issue_id),
                                         "--json")))
    assert (as_json["status"], as_json["resolved_at"] is not None) == ("resolved", True)
    assert await egen(config, "issues", "ignore", "4242") == (
        1, "", "egen: no issue with id 4242\n")
    rc, _, err = await egen(config, "issues", "reopen", "x")
    assert rc == 2 and "'x' is not an issue ID or short ID (SHOP-12)" in err


# -- projects -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_project_add(db: Database, config: Path, public: Path) -> None:
    out = ok(await egen(public, "project", "add", "shop", "--id", "42", "--key", "shopkey1"))
    assert out == ("project shop (id 42) added; its DSN:\n"
                   "https://shopkey1@errors.example.com/egen/42\n")
    assert await db.pool.fetchval("SELECT project_id FROM project_keys WHERE key = "
                                  "'shopkey1'") == 42
    # The next free id is past the config's projects too (a daemon adds them at start).
    out = ok(await egen(config, "project", "add", "blog"))
    first, address = out.splitlines()
    assert first == "project blog (id 43) added; its DSN:"
    key = await db.pool.fetchval("SELECT key FROM project_keys WHERE project_id = 43")
    assert len(key) == 32 and address == f"http://{key}@[::1]:8800/43"
    out = ok(await egen(public, "project", "add", "docs"))
    assert out.startswith("project docs (id 44) added")

    failures = await asyncio.gather(
        egen(public, "project", "add", "shop"),
        egen(public, "project", "add", "new", "--id", "1"),
        egen(public, "project", "add", "other", "--key", "shopkey1"),
        egen(public, "project", "add", "Bad Name"),
        egen(public, "project", "add", "short", "--key", "k"),
        egen(config, "project", "add", "cfg"),
        egen(config, "project", "add", "clash", "--id", "10"),
        egen(config, "project", "add", "stolen", "--key", "cfgkey1"),
        egen(public, "project", "add", "zero", "--id", "0"),
        egen(public, "project", "add", "huge", "--id", "2147483648"))
    errors = [(rc, err) for rc, _, err in failures]
    source = config
    assert errors[:8] == [
        (1, "egen: a project named 'shop' exists already\n"),
        (1, "egen: project id 1 is taken\n"),
        (1, "egen: that key belongs to another project\n"),
        (1, "egen: name: 'Bad Name' is not a usable project name: lowercase letters, "
            "digits, '-' and '_', starting with a letter or digit\n"),
        (1, "egen: key: 'k' is not a usable key: 4 to 64 letters, digits, '-' or '_'\n"),
        (1, f"egen: a project named 'cfg' is configured in {source}\n"),
        (1, f"egen: project id 10 belongs to 'cfg' in {source}\n"),
        (1, f"egen: that key belongs to project 'cfg' in {source}\n")]
    assert errors[8][0] == 2 and "'0' is not a positive number" in errors[8][1]
    assert errors[9][0] == 2 and "'2147483648' is above the largest project id" in errors[9][1]
    assert await db.pool.fetchval("SELECT count(*) FROM projects") == 6


@pytest.mark.slow
async def test_project_list(db: Database, config: Path, public: Path) -> None:
    await seed(db)
    await db.pool.execute("INSERT INTO project_keys (key, project_id) VALUES ('appkey2', 1)")
    as_json, text, behind_proxy = await asyncio.gather(
        egen(config, "project", "list", "--json"), egen(config, "project", "list"),
        egen(public, "project", "list"))
    projects = orjson.loads(ok(as_json))
    assert [(p["name"], p["id"], p["issues"], p["events"]) for p in projects] == [
        ("app", 1, 3, 5), ("web", 2, 1, 1), ("2", 3, 0, 0)]
    assert projects[0]["dsns"] == ["http://appkey1@[::1]:8800/1",
                                   "http://appkey2@[::1]:8800/1"]
    assert projects[2]["keys"] == [] and projects[2]["dsns"] == []
    assert [line.split() for line in ok(text).splitlines()] == [
        ["NAME", "ID", "ISSUES", "EVENTS", "DSN"],
        ["app", "1", "3", "5", "http://appkey1@[::1]:8800/1"],
        ["app", "1", "3", "5", "http://appkey2@[::1]:8800/1"],
        ["web", "2", "1", "1", "http://webkey1@[::1]:8800/2"],
        ["2", "3", "0", "0", "-"]]
    assert "https://webkey1@errors.example.com/egen/2" in ok(behind_proxy)


# -- start-up -------------------------------------------------------------------------------

# What a read-only verb has no use for: the daemon's components, the web stack, mail
# signing and delivery. Importing any of them cost a verb over half a second.
HEAVY = ("daemon.app", "daemon.web", "daemon.mail.intake.server", "daemon.alerts.compose",
         "daemon.mail.dkimkeys", "aiohttp", "jinja2", "dkim", "aiosmtpd", "aiosmtplib")

_LOADED = """
import sys
from daemon.cli.dispatch import main
rc = main(sys.argv[1:])
print("LOADED", " ".join(sorted(sys.modules)))
sys.exit(rc)
"""


@pytest.mark.slow
@pytest.mark.parametrize("verb", [["--version"], ["issues", "list"], ["queue", "list"],
                                  ["mail", "log"], ["alerts", "log"], ["check-config"],
                                  ["project", "list"]])
async def test_read_only_verbs_import_only_what_they_use(db: Database, config: Path,
                                                         verb: list[str]) -> None:
    args = verb if verb == ["--version"] else [*verb, "--config", str(config)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LOADED, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    if verb == ["--version"]:          # argparse exits before the print
        assert proc.returncode == 0 and text.startswith("egen ")
        return
    assert proc.returncode == 0, err.decode()
    loaded = text.rsplit("LOADED ", 1)[1].split()
    heavy = [m for m in loaded if (m in HEAVY or m.startswith(tuple(f"{h}." for h in HEAVY)))
             and not m.endswith(".settings") and m != "daemon.web"]   # config reads those
    assert heavy == [], f"{verb}: {heavy}"
