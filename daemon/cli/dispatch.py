"""The `egen` command: argument parsing and dispatch to verbs; no business logic.

Verbs are grouped by noun (`egen queue list`); each verb that prints data has `--json`.
Exit status: 0 success, 1 runtime failure, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from daemon import __version__
from daemon.cli.alerts import add_alert_verbs
from daemon.cli.common import load_settings, with_database
from daemon.cli.dns import add_dns_verbs
from daemon.cli.events import add_events_verbs
from daemon.cli.mail import add_mail_verbs
from daemon.cli.queue import QUEUE_STATUSES, add_queue_verbs  # noqa: F401 - moved with the queue noun; still importable here
from daemon.cli.web import add_web_verbs
from daemon.config import ConfigError, summary
from daemon.db.pool import DatabaseError

if TYPE_CHECKING:
    pass

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
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

    add_queue_verbs(verbs, common)
    add_mail_verbs(verbs, common)
    add_events_verbs(verbs, common)
    add_alert_verbs(verbs, common)
    add_dns_verbs(verbs, common)
    add_web_verbs(verbs, common)
    return parser


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args)
    except ConfigError as err:
        if not args.json:
            raise
        # A script asked for JSON: it gets JSON on stdout for a broken file too.
        problems = [{"file": err.source, "key": issue.key, "message": issue.message}
                    for issue in err.issues]
        sys.stdout.write(orjson.dumps({"ok": False, "problems": problems},
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_CONFIG
    rows = summary(settings)
    if args.json:
        sys.stdout.write(orjson.dumps({"ok": True, **dict(rows)},
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        width = max(len(key) for key, _ in rows)
        for key, value in rows:
            sys.stdout.write(f"{key:<{width}}  {value}\n")
    return EXIT_OK


def cmd_nodes_list(args: argparse.Namespace) -> int:
    from daemon.cli.output import print_json, print_table
    from daemon.db.nodes import list_nodes

    rows = with_database(args, list_nodes)
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["id", "version", "started_at", "heartbeat_age"])
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
