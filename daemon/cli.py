"""The `egen` command: argument parsing and dispatch to verbs; no business logic.

Verbs are grouped by noun (`egen queue list`); each verb that prints data has `--json`.
Exit status: 0 success, 1 runtime failure, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from daemon import __version__
from daemon.cli_mail import add_mail_verbs
from daemon.config import ConfigError, Settings, load, resolve_path, summary
from daemon.db.pool import DatabaseError

if TYPE_CHECKING:
    import asyncpg

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
QUEUE_STATUSES = ("queued", "delivering", "deferred", "delivered", "bounced", "expired")
T = TypeVar("T")


def _common() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", "-c", metavar="PATH", default=argparse.SUPPRESS,
                        help="config file (default: $EGEN_CONFIG, else /etc/egen/egen.toml)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="egen", parents=[common],
        description="Self-hosted mail relay and error-event ingest.")
    parser.add_argument("--version", action="version", version=f"egen {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    run = verbs.add_parser("run", parents=[common], help="run the daemon in the foreground",
                           description="Run the daemon until SIGTERM; SIGHUP reloads.")
    run.set_defaults(func=cmd_run)

    check = verbs.add_parser("check-config", parents=[common],
                             help="validate the config and show what would run where",
                             description="Validate the config file: exit 0 and print a "
                                         "summary, or print every problem and exit 2.")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(func=cmd_check_config)

    nodes = verbs.add_parser("nodes", help="egen processes sharing the database",
                             description="egen processes sharing the database.")
    node_verbs = nodes.add_subparsers(dest="node_verb", metavar="VERB", required=True)
    node_list = node_verbs.add_parser(
        "list", parents=[common], help="list registered processes and their heartbeats",
        description="List the egen processes registered in the database, newest "
                    "heartbeat first. A heartbeat older than a minute means a dead process.")
    node_list.add_argument("--json", action="store_true", help="print JSON")
    node_list.set_defaults(func=cmd_nodes_list)

    queue = verbs.add_parser("queue", help="the mail queue",
                             description="Messages in the mail queue and their recipients.")
    queue_verbs = queue.add_subparsers(dest="queue_verb", metavar="VERB", required=True)
    queue_list = queue_verbs.add_parser(
        "list", parents=[common], help="list queued messages, oldest first",
        description="List messages oldest first: ID, sender, recipients (count and first), "
                    "size, age and how many recipients are in each status. By default only "
                    "messages with a recipient still queued, delivering or deferred.")
    queue_list.add_argument("--json", action="store_true", help="print JSON")
    queue_list.add_argument(
        "--status", default="pending", choices=["pending", "all", *QUEUE_STATUSES],
        help="only messages with a recipient in this status (pending: queued, delivering "
             "or deferred; all: every stored message; default: pending)")
    queue_list.add_argument("--limit", type=_positive_int, default=100, metavar="N",
                            help="show at most N messages (default: 100)")
    queue_list.set_defaults(func=cmd_queue_list)
    queue_show = queue_verbs.add_parser(
        "show", parents=[common], help="show one message: envelope, recipients, headers",
        description="Show one message: its envelope, each recipient with status, attempts, "
                    "next attempt and last error, its log events, and the message headers.")
    queue_show.add_argument("id", metavar="ID", help="queue ID (as in 'queued as ID')")
    queue_show.add_argument("--json", action="store_true", help="print JSON")
    queue_show.add_argument("--body", action="store_true",
                            help="also print the message body")
    queue_show.set_defaults(func=cmd_queue_show)
    add_mail_verbs(verbs, common)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def load_settings(args: argparse.Namespace) -> Settings:
    return load(resolve_path(getattr(args, "config", None)))


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    rows = summary(settings)
    if args.json:
        sys.stdout.write(orjson.dumps(dict(rows), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        width = max(len(key) for key, _ in rows)
        for key, value in rows:
            sys.stdout.write(f"{key:<{width}}  {value}\n")
    return EXIT_OK


def with_database(args: argparse.Namespace,
                  work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Run one operator verb against the config's database (the embedded one included:
    it is adopted if the daemon runs it, else started for the verb and stopped after)."""
    import uvloop

    from daemon.app import database_for
    from daemon.logs import setup_logging

    settings = load_settings(args)
    setup_logging("warning", settings.log.format)

    async def main() -> T:
        db = database_for(settings, owns_embedded=False)
        await db.start()
        try:
            return await work(db.pool)
        finally:
            await db.stop()

    return uvloop.run(main())


def cmd_nodes_list(args: argparse.Namespace) -> int:
    from daemon.cli_output import print_json, print_table
    from daemon.db.nodes import list_nodes

    rows = with_database(args, list_nodes)
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["id", "version", "started_at", "heartbeat_age"])
    return EXIT_OK


def _age(seconds: float) -> str:
    """3s, 4m12s, 2h05m, 3d04h: compact, for tables."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def cmd_queue_list(args: argparse.Namespace) -> int:
    from daemon.cli_output import print_json, print_table
    from daemon.mail.queue_store import PENDING, list_messages

    statuses = {"pending": PENDING, "all": None}.get(args.status, (args.status,))
    rows = with_database(args, lambda pool: list_messages(
        pool, statuses=statuses, limit=args.limit))
    if args.json:
        print_json(rows)
        return EXIT_OK
    for row in rows:
        more = row["recipients"] - 1
        row["recipients"] = (row["first_recipient"] or "-") + (f" (+{more})" if more > 0 else "")
        row["sender"] = row["sender"] or "<>"
        row["age"] = _age(row["age"])
        row["status"] = ", ".join(f"{status} {n}" for status, n in row["statuses"].items())
    print_table(rows, ["id", "sender", "recipients", "size", "age", "status"])
    if len(rows) == args.limit:
        sys.stderr.write(f"(showing the oldest {args.limit}; --limit N shows more)\n")
    return EXIT_OK


def cmd_queue_show(args: argparse.Namespace) -> int:
    from daemon.cli_output import print_json, print_table
    from daemon.mail.queue_store import show_message

    message = with_database(args, lambda pool: show_message(pool, args.id))
    if message is None:
        sys.stderr.write(f"egen: no message with queue ID {args.id!r}\n")
        return EXIT_FAILURE
    headers, body = message.pop("headers"), message.pop("body")
    if args.json:
        message["headers"] = headers.decode("utf-8", "replace")
        if args.body:
            message["body"] = body.decode("utf-8", "replace")
        print_json(message)
        return EXIT_OK
    recipients, events = message.pop("recipients"), message.pop("events")
    message["sender"] = message["sender"] or "<>"
    message["age"] = _age(message["age"])
    message["signed_by"] = "; ".join(message["signed_by"]) or None
    width = max(len(key) for key in message)
    for key, value in message.items():
        shown = "-" if value is None else value
        if isinstance(value, datetime):
            shown = f"{value:%Y-%m-%d %H:%M:%S%z}"
        sys.stdout.write(f"{key + ':':<{width + 1}}  {shown}\n")
    sys.stdout.write("\n")
    print_table(recipients, ["idx", "recipient", "status", "attempts", "next_attempt_at",
                             "last_code", "last_response"])
    sys.stdout.write("\n")
    for event in events:
        where = "" if event["recipient_idx"] is None else f" rcpt {event['recipient_idx']}"
        detail = "" if event["event"] == "accepted" else " " + orjson.dumps(
            event["detail"], default=str).decode()
        sys.stdout.write(f"{event['at']:%Y-%m-%d %H:%M:%S%z} {event['event']}{where}{detail}\n")
    sys.stdout.write("\n")
    sys.stdout.flush()
    sys.stdout.buffer.write(headers)
    if args.body:
        sys.stdout.buffer.write(b"\r\n" if headers.endswith(b"\r\n") else b"\n")
        sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import uvloop

    from daemon.app import App
    from daemon.logs import setup_logging

    settings = load_settings(args)
    setup_logging(settings.log.level, settings.log.format)

    async def main() -> int:
        return await App(settings).run()

    return uvloop.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], Any] = args.func
    try:
        return int(func(args))
    except ConfigError as err:
        for line in err.lines():
            sys.stderr.write(f"{line}\n")
        return EXIT_CONFIG
    except DatabaseError as err:
        sys.stderr.write(f"egen: {err}\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
