"""Operator verbs for alerts: `egen alerts test --project P` (a sample alert through every
channel the project's rules name) and `egen alerts log` (what was sent, and what each
attempt got back).

The test alert goes through the running daemon's own path: the verb writes the rendered
messages into the send table and the daemon delivers them (mail via its queue, so the
test proves signing and routing too), while the verb waits and reports each outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson

from daemon.cli.common import load_settings, positive_int, with_database
from daemon.cli.output import print_json, print_table
from daemon.units import parse_duration

if TYPE_CHECKING:
    import asyncpg

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_alert_verbs(verbs: argparse._SubParsersAction,
                    common: argparse.ArgumentParser) -> None:
    alerts = verbs.add_parser("alerts", help="alert channels and their history",
                              description="Alerts on new, regressed, spiking and critical "
                                          "issues.")
    alert_verbs = alerts.add_subparsers(dest="alerts_verb", metavar="VERB", required=True)
    test = alert_verbs.add_parser(
        "test", parents=[common], help="send a sample alert through a project's channels",
        description="Send a sample alert through every channel the project's alert rules "
                    "name, and wait for each outcome (the running daemon delivers them).")
    test.add_argument("--project", required=True, metavar="P", help="project name")
    test.add_argument("--wait", type=_duration, default=30.0, metavar="DURATION",
                      help="how long to wait for the outcomes (default: 30s)")
    test.add_argument("--json", action="store_true", help="print JSON")
    test.set_defaults(func=cmd_alerts_test)

    log = alert_verbs.add_parser(
        "log", parents=[common], help="show alert messages and their delivery attempts",
        description="Alert messages, newest first: channel, alerts folded in, state "
                    "(pending, sent, failed), attempts and the last result.")
    log.add_argument("--channel", metavar="NAME", help="only this channel")
    log.add_argument("--since", type=_duration, default=86400.0, metavar="DURATION",
                     help="how far back (default: 1d)")
    log.add_argument("--limit", type=positive_int, default=100, metavar="N",
                     help="show at most N messages (default: 100)")
    log.add_argument("--json", action="store_true", help="print JSON (with every attempt)")
    log.set_defaults(func=cmd_alerts_log)


def cmd_alerts_test(args: argparse.Namespace) -> int:
    from daemon.alerts import compose, store  # rendering pulls in the mail stack

    settings = load_settings(args)
    matched = [r for r in settings.alerts.rules if r.applies_to(args.project)]
    names = list(dict.fromkeys(c for r in matched for c in r.channels))
    if not names:
        sys.stderr.write(f"egen: no alert rule names a channel for project "
                         f"{args.project!r}\n")
        return EXIT_USAGE

    async def work(pool: asyncpg.Pool) -> list[dict[str, Any]]:
        if not await pool.fetchval("SELECT 1 FROM projects WHERE name = $1", args.project):
            raise LookupError(f"no project named {args.project!r}")
        now = time.time()
        alert = compose.sample_alert(args.project, now)
        sends: dict[int, str] = {}
        async with pool.acquire() as conn, conn.transaction():
            for name in names:
                channel = settings.alerts.channel(name)
                assert channel is not None   # the config check saw to it
                send_id = await conn.fetchval("SELECT nextval('alert_sends_id_seq')")
                body = compose.body(channel, [alert], now=now, hostname=settings.hostname,
                                    sender=compose.sender(settings.alerts, settings.hostname),
                                    delivery_id=f"test-{send_id}")
                await conn.execute(
                    "INSERT INTO alert_sends (id, channel, created_at, alerts, test, body, "
                    "next_attempt_at) VALUES ($1, $2, $3, 1, true, $4, $3)",
                    send_id, name, store.at(now), body)
                sends[send_id] = name
        deadline = time.monotonic() + args.wait
        while True:
            states = await store.send_states(pool, list(sends))
            done = all(state != "pending" for state, _ in states.values())
            if done or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
        return [{"channel": name, "send": send_id, "state": states[send_id][0],
                 "result": states[send_id][1] or ("not attempted yet: is egen running?"
                                                  if states[send_id][0] == "pending"
                                                  else "")}
                for send_id, name in sends.items()]

    try:
        rows = with_database(args, work)
    except LookupError as err:
        sys.stderr.write(f"egen: {err.args[0]}\n")
        return EXIT_USAGE
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["channel", "send", "state", "result"])
    return EXIT_OK if all(r["state"] == "sent" for r in rows) else EXIT_FAILURE


def cmd_alerts_log(args: argparse.Namespace) -> int:
    from daemon.alerts import store

    async def work(pool: asyncpg.Pool) -> list[dict[str, Any]]:
        return await store.send_log(pool, since=time.time() - args.since,
                                    channel=args.channel, limit=args.limit)

    rows = with_database(args, work)
    for row in rows:
        row["tries"] = orjson.loads(row["tries"])
    if args.json:
        print_json(rows)
    else:
        print_table([{**r, "alerts": f"{r['alerts']}{' (test)' if r['test'] else ''}"}
                     for r in rows],
                    ["id", "created_at", "channel", "alerts", "state", "attempts", "result"])
    return EXIT_OK
