"""Operator verbs for the error tracker: `egen issues list|show|resolve|ignore|reopen` and
`egen project add|list`. Parsing and printing only; the SQL is in daemon.events.storage.queries
and daemon.events.projects, shared with the operator API so both answer alike.

`issues show` prints the latest event's stack trace the way Python prints one (most
recent call last), because that is the form an operator reads fastest in a terminal.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from daemon.cli.common import load_settings, positive_int, with_database
from daemon.cli.output import print_json, print_table
from daemon.events.dsn import dsn
from daemon.events.storage import issue_list, issue_status, queries

if TYPE_CHECKING:
    import asyncpg

    from daemon.config import Settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")
_SORTS = tuple(issue_list.SORTS)


def add_events_verbs(verbs: argparse._SubParsersAction,
                     common: argparse.ArgumentParser) -> None:
    issues = verbs.add_parser("issues", help="error-tracker issues",
                              description="Issues: events grouped by fingerprint.")
    issue_verbs = issues.add_subparsers(dest="issues_verb", metavar="VERB", required=True)
    list_verb = issue_verbs.add_parser(
        "list", parents=[common], help="list issues, most recently seen first",
        description="List issues: ID, level, status, event count, last seen, project and "
                    "title. By default only unresolved ones, most recently seen first.")
    list_verb.add_argument("--project", metavar="P", help="only this project (name or id)")
    list_verb.add_argument("--status", default="unresolved",
                           choices=[*queries.STATUSES, "all"],
                           help="only issues in this status (default: unresolved)")
    list_verb.add_argument("--level", choices=queries.LEVELS, help="only this level")
    list_verb.add_argument("--environment", metavar="E",
                           help="only issues with events from this environment")
    list_verb.add_argument("--query", metavar="TEXT",
                           help="only issues whose title or culprit contains TEXT "
                                "(ignoring case)")
    list_verb.add_argument("--search", metavar="Q",
                           help="the web page's search: words, key:value tags, "
                                "user.email:…, release:…, is:regressed, !key:value")
    list_verb.add_argument("--sort", default="last_seen", choices=_SORTS,
                           help="newest last_seen, newest first_seen, most events or most "
                                "users first (default: last_seen)")
    list_verb.add_argument("--limit", type=positive_int, default=100, metavar="N",
                           help=f"show at most N issues (default: 100, at most "
                                f"{queries.MAX_LIMIT})")
    list_verb.add_argument("--json", action="store_true", help="print JSON")
    list_verb.set_defaults(func=cmd_issues_list)

    show = issue_verbs.add_parser(
        "show", parents=[common], help="show one issue and its latest stack trace",
        description="Show one issue: title, culprit, level, status, counts, first and last "
                    "seen, the latest event's stack trace (most recent call last) and its "
                    "latest events.")
    show.add_argument("id", metavar="ID", type=_issue_ref,
                      help="issue ID or short ID (SHOP-12)")
    show.add_argument("--events", type=int, default=10, metavar="N",
                      help="how many of the latest events to show (default: 10)")
    show.add_argument("--json", action="store_true",
                      help="print JSON (with each event's full data)")
    show.set_defaults(func=cmd_issues_show)

    for verb, status, text in (
            ("resolve", "resolved", "mark an issue resolved (its next event reopens it)"),
            ("ignore", "ignored", "mark an issue ignored (new events keep it ignored)"),
            ("reopen", "unresolved", "mark a resolved or ignored issue unresolved")):
        change = issue_verbs.add_parser(verb, parents=[common], help=text,
                                        description=text[0].upper() + text[1:] + ".")
        change.add_argument("id", metavar="ID", type=_issue_ref,
                            help="issue ID or short ID (SHOP-12)")
        change.add_argument("--json", action="store_true", help="print the issue as JSON")
        change.set_defaults(func=cmd_issues_status, status=status)

    project = verbs.add_parser("project", help="error-tracker projects",
                               description="Projects and their DSNs.")
    project_verbs = project.add_subparsers(dest="project_verb", metavar="VERB", required=True)
    add = project_verbs.add_parser(
        "add", parents=[common], help="add a project and print its DSN",
        description="Add a project to the database (not to egen.toml) with a fresh key, "
                    "or the given one, and print its DSN. Every node opens it within "
                    "seconds.")
    add.add_argument("name", metavar="NAME", help="project name (lowercase, digits, - and _)")
    add.add_argument("--id", type=_project_id, metavar="N",
                     help="project id, the number in the DSN (default: the next free one)")
    add.add_argument("--key", metavar="KEY", help="public key (default: 32 random hex digits)")
    add.set_defaults(func=cmd_project_add)

    project_list = project_verbs.add_parser(
        "list", parents=[common], help="list projects and their DSNs",
        description="List projects with their ids, issue and event counts, and one DSN per "
                    "key (built from ingest.public_url, else the first http.listen "
                    "address).")
    project_list.add_argument("--json", action="store_true", help="print JSON")
    project_list.set_defaults(func=cmd_project_list)


def _project_id(text: str) -> int:
    value = positive_int(text)
    if value > 2**31 - 1:
        raise argparse.ArgumentTypeError(f"{text!r} is above the largest project id, "
                                         "2147483647")
    return value


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"egen: {message}\n")
    return code


def _when(iso: str | None) -> str:
    """'2024-05-01 12:03:04+0000' for tables, as the other verbs print times; '-' for
    none."""
    if iso is None:
        return "-"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S%z")


def _status(issue: dict[str, Any]) -> str:
    return "regressed" if issue["regressed"] else issue["status"]


def cmd_issues_list(args: argparse.Namespace) -> int:
    try:
        rows = with_database(args, lambda pool: issue_list.list_issues(
            pool, project=args.project, status=None if args.status == "all" else args.status,
            level=args.level, environment=args.environment, text=args.query,
            query=args.search, sort=args.sort, limit=args.limit))
    except queries.UnknownProject as err:
        return _fail(str(err), EXIT_FAILURE)
    except queries.QueryError as err:
        return _fail(str(err), EXIT_USAGE)
    if args.json:
        print_json(rows)
        return EXIT_OK
    shown = [{**row, "status": _status(row), "last_seen": _when(row["last_seen"])}
             for row in rows]
    print_table(shown, ["id", "short_id", "level", "status", "count", "last_seen", "project",
                        "title"])
    if len(rows) == args.limit:
        sys.stderr.write(f"(showing the first {args.limit}; --limit N shows more)\n")
    return EXIT_OK


_REF = re.compile(r"\d{1,19}|[A-Za-z0-9][A-Za-z0-9_-]{0,63}-\d{1,18}")


def _issue_ref(text: str) -> str:
    if not _REF.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an issue ID or short ID "
                                         "(SHOP-12)")
    return text


async def _named(pool: asyncpg.Pool, text: str) -> int:
    """The issue id `text` names (an id or a short id); 0, which no issue has, if none."""
    return await queries.issue_id_for(pool, text) or 0


def cmd_issues_show(args: argparse.Namespace) -> int:
    async def work(pool: asyncpg.Pool) -> dict[str, Any] | None:
        return await queries.get_issue(pool, await _named(pool, args.id), events=args.events)

    try:
        issue = with_database(args, work)
    except queries.QueryError as err:
        return _fail(str(err), EXIT_USAGE)
    if issue is None:
        return _fail(f"no issue with id {args.id}", EXIT_FAILURE)
    if args.json:
        print_json(issue)
        return EXIT_OK
    out = sys.stdout
    out.write(f"{issue['short_id'] or '#' + str(issue['id'])} {issue['title']}\n\n")
    status = issue["status"] + (" (regressed)" if issue["regressed"] else "")
    details = [("project", f"{issue['project']} (id {issue['project_id']})"),
               ("culprit", issue["culprit"] or "-"), ("level", issue["level"]),
               ("status", status), ("events", str(issue["count"])),
               ("first seen", _when(issue["first_seen"])),
               ("last seen", _when(issue["last_seen"])),
               ("environment", issue["environment"] or "-"),
               ("release", issue["release"] or "-")]
    if issue["resolved_at"] is not None:
        details.append(("resolved", _when(issue["resolved_at"])))
    width = max(len(key) for key, _ in details) + 1
    for key, value in details:
        out.write(f"{key + ':':<{width}}  {value}\n")
    if issue["stacktrace"]:
        out.write("\n" + format_trace(issue["stacktrace"]))
    if issue["events"]:
        out.write("\n")
        print_table([{**e, "received_at": _when(e["received_at"])} for e in issue["events"]],
                    ["event_id", "received_at", "level", "environment", "release"])
    return EXIT_OK


def _exception_name(exception: dict[str, Any]) -> str:
    name = exception["type"] or "Error"
    module = exception.get("module")
    if module and module not in ("builtins", "__builtin__", "exceptions"):
        name = f"{module}.{name}"
    return name


def format_trace(exceptions: list[dict[str, Any]]) -> str:
    """Exceptions in Sentry order (cause first, frames oldest call first) printed the way
    Python prints a traceback."""
    blocks = []
    for exception in exceptions:
        lines = []
        if exception["frames"]:
            lines.append("Traceback (most recent call last):")
            for frame in exception["frames"]:
                filename = frame["filename"] or frame["module"] or "<unknown>"
                lineno = "?" if frame["lineno"] is None else frame["lineno"]
                lines.append(f'  File "{filename}", line {lineno}, '
                             f"in {frame['function'] or '<unknown>'}")
                if frame["context_line"] and frame["context_line"].strip():
                    lines.append(f"    {frame['context_line'].strip()}")
        value = exception["value"]
        lines.append(_exception_name(exception) + (f": {value}" if value else ""))
        blocks.append("\n".join(lines) + "\n")
    return "\nThe above exception led to the following exception:\n\n".join(blocks)


def cmd_issues_status(args: argparse.Namespace) -> int:
    async def work(pool: asyncpg.Pool) -> dict[str, Any] | None:
        return await issue_status.set_status(pool, await _named(pool, args.id), args.status)

    issue = with_database(args, work)
    if issue is None:
        return _fail(f"no issue with id {args.id}", EXIT_FAILURE)
    if args.json:
        print_json(issue)
    else:
        sys.stdout.write(f"issue {issue['id']} is {issue['status']}: {issue['title']}\n")
    return EXIT_OK


def _config_clash(settings: Settings, args: argparse.Namespace) -> str | None:
    """Why the project cannot be added next to the config's projects (which a daemon
    writes into the database at start, over anything holding their ids), or None."""
    for p in settings.projects:
        if p.name == args.name:
            return f"a project named {args.name!r} is configured in {settings.source}"
        if p.id == args.id:
            return f"project id {args.id} belongs to {p.name!r} in {settings.source}"
        if args.key is not None and args.key in p.keys:
            return f"that key belongs to project {p.name!r} in {settings.source}"
    return None


def cmd_project_add(args: argparse.Namespace) -> int:
    from daemon.events.projects import add_project

    settings = load_settings(args)
    clash = _config_clash(settings, args)
    if clash is not None:
        return _fail(clash, EXIT_FAILURE)
    reserved = max((p.id for p in settings.projects), default=0)

    async def add(pool: asyncpg.Pool) -> Any:
        project_id = args.id
        if project_id is None and reserved:
            project_id = max(reserved, await pool.fetchval(
                "SELECT coalesce(max(id), 0) FROM projects")) + 1
        return await add_project(pool, args.name, project_id=project_id, key=args.key)

    try:
        project = with_database(args, add)
    except ValueError as err:
        return _fail(str(err), EXIT_FAILURE)
    [key] = project.keys
    address = dsn(settings.ingest.public_url, settings.http.listen[0], key, project.id)
    sys.stdout.write(f"project {project.name} (id {project.id}) added; its DSN:\n"
                     f"{address}\n")
    return EXIT_OK


def cmd_project_list(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    projects = with_database(args, queries.list_projects)
    for project in projects:
        project["dsns"] = [dsn(settings.ingest.public_url, settings.http.listen[0], key,
                               project["id"]) for key in project["keys"]]
    if args.json:
        print_json(projects)
        return EXIT_OK
    rows = [{"name": p["name"], "id": p["id"], "issues": p["issues"], "events": p["events"],
             "dsn": address} for p in projects for address in p["dsns"] or [None]]
    print_table(rows, ["name", "id", "issues", "events", "dsn"])
    return EXIT_OK
