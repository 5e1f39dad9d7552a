"""Operator verbs for the mail queue and the delivery log: `egen queue list|show|retry|
delete|flush` and `egen mail log`. Parsing and printing only; the SQL is in
daemon.mail.queue.store and daemon.mail.queue.admin."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from daemon.cli.common import positive_int, with_database
from daemon.cli.output import print_json, print_table
from daemon.units import parse_duration

if TYPE_CHECKING:
    pass

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
QUEUE_STATUSES = ("queued", "delivering", "deferred", "delivered", "bounced", "expired")
T = TypeVar("T")


def add_queue_verbs(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
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
    queue_list.add_argument("--limit", type=positive_int, default=100, metavar="N",
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

    retry = queue_verbs.add_parser(
        "retry", parents=[common], help="make a message's waiting recipients due now",
        description="Make every queued or deferred recipient of message ID due now (a "
                    "delivery picks them up at its next poll), or with --all every deferred "
                    "recipient of every message. Recipients being delivered right now are "
                    "left alone. Each one made due gets a 'retry' event in the mail log.")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("id", metavar="ID", nargs="?", help="queue ID")
    target.add_argument("--all", action="store_true", help="every deferred recipient")
    retry.add_argument("--json", action="store_true", help="print JSON")
    retry.set_defaults(func=cmd_queue_retry)

    delete = queue_verbs.add_parser(
        "delete", parents=[common], help="remove a message from the queue (no bounce)",
        description="Remove message ID and its recipients from the queue without notifying "
                    "the sender. The mail log keeps the message's events and gets a "
                    "'deleted' event. A message a delivery is sending right now is refused "
                    "unless --force.")
    delete.add_argument("id", metavar="ID", help="queue ID")
    delete.add_argument("--force", action="store_true",
                        help="delete even while a delivery holds it (that attempt may still "
                             "reach the recipient, and its result is not recorded)")
    delete.add_argument("--json", action="store_true", help="print JSON")
    delete.set_defaults(func=cmd_queue_delete)

    flush = queue_verbs.add_parser(
        "flush", parents=[common], help="make every deferred recipient due now",
        description="Make every deferred recipient of every message due now (like "
                    "'postqueue -f'); the same as 'egen queue retry --all'.")
    flush.add_argument("--json", action="store_true", help="print JSON")
    flush.set_defaults(func=cmd_queue_flush)

    mail = verbs.add_parser("mail", help="the delivery log",
                            description="What happened to mail: the delivery log.")
    mail_verbs = mail.add_subparsers(dest="mail_verb", metavar="VERB", required=True)
    log = mail_verbs.add_parser(
        "log", parents=[common], help="the delivery log, newest first",
        description="The delivery log newest first: every message accepted, every attempt "
                    "per recipient (relay, TLS, the reply code and text), retries, bounces, "
                    "expiry and deletions. It outlives deleted messages. Address filters "
                    "are exact and ignore case; an 'accepted' or 'deleted' event matches "
                    "--to when the address is one of the message's recipients.")
    log.add_argument("--to", metavar="ADDR", help="only events about this recipient")
    log.add_argument("--from", dest="sender", metavar="ADDR",
                     help="only mail from this sender ('<>' for the null sender)")
    log.add_argument("--id", metavar="QUEUE_ID", help="only this message")
    log.add_argument("--since", metavar="DURATION",
                     help="only events of the last DURATION (30m, 1h, 2d)")
    log.add_argument("--limit", type=positive_int, default=100, metavar="N",
                     help="show at most N events (default: 100)")
    log.add_argument("--json", action="store_true", help="print JSON")
    log.set_defaults(func=cmd_mail_log)


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


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def cmd_queue_list(args: argparse.Namespace) -> int:
    from daemon.mail.queue.store import PENDING, list_messages

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
    from daemon.mail.queue.store import show_message

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


def cmd_queue_retry(args: argparse.Namespace) -> int:
    from daemon.mail.queue import admin as queue_admin

    if args.all:
        return _flush(args, by="egen queue retry --all")
    result = with_database(args, lambda pool: queue_admin.retry_message(pool, args.id))
    if result is None:
        sys.stderr.write(f"egen: no message with queue ID {args.id!r}\n")
        return EXIT_FAILURE
    if args.json:
        print_json({"id": args.id, "rescheduled": result.rescheduled,
                    "delivering": result.delivering})
        return EXIT_OK
    line = f"{_plural(result.rescheduled, 'recipient')} of {args.id} due now"
    if result.delivering:
        line += f"; {result.delivering} being delivered right now, left alone"
    sys.stdout.write(line + "\n")
    return EXIT_OK


def cmd_queue_flush(args: argparse.Namespace) -> int:
    return _flush(args, by="egen queue flush")


def _flush(args: argparse.Namespace, *, by: str) -> int:
    from daemon.mail.queue import admin as queue_admin

    count = with_database(args, lambda pool: queue_admin.retry_deferred(pool, by=by))
    if args.json:
        print_json({"rescheduled": count})
    else:
        sys.stdout.write(f"{_plural(count, 'deferred recipient')} due now\n")
    return EXIT_OK


def cmd_queue_delete(args: argparse.Namespace) -> int:
    from daemon.mail.queue import admin as queue_admin

    try:
        result = with_database(args, lambda pool: queue_admin.delete_message(
            pool, args.id, force=args.force))
    except queue_admin.BeingDelivered as busy:
        until = max(lease.until for lease in busy.leases)
        sys.stderr.write(f"egen: {busy} (lease until {until:%Y-%m-%d %H:%M:%S%z}); "
                         f"try again after it, or use --force\n")
        return EXIT_FAILURE
    if result is None:
        sys.stderr.write(f"egen: no message with queue ID {args.id!r}\n")
        return EXIT_FAILURE
    if args.json:
        print_json({"id": result.id, "recipients": result.recipients,
                    "pending": result.pending, "forced": result.forced})
        return EXIT_OK
    line = (f"deleted {result.id} ({_plural(result.recipients, 'recipient')}, "
            f"{result.pending} not delivered")
    if result.forced:
        line += f", {result.forced} in the middle of a delivery"
    sys.stdout.write(line + ")\n")
    return EXIT_OK


def _address(text: str | None) -> str | None:
    """'<a@b>' and 'a@b' are the same address; '<>' is the null sender ''."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text


def _note(row: dict[str, Any]) -> str | None:
    """What the RESPONSE column shows for events that are not delivery attempts."""
    detail = row["detail"]
    if row["event"] == "accepted":
        return (f"from <{row['sender'] or ''}> via {detail.get('client_ip', '?')}, "
                f"{detail.get('size', '?')} bytes")
    if row["event"] == "retry":
        return f"made due now by {detail.get('by', 'an operator')}"
    if row["event"] == "deleted":
        return (f"deleted by {detail.get('by', 'an operator')}, "
                f"{detail.get('pending', '?')} not delivered")
    return None


def _recipient_cell(row: dict[str, Any]) -> str | None:
    if row["recipient"] is not None or not row["recipients"]:
        return row["recipient"]
    first, more = row["recipients"][0], len(row["recipients"]) - 1
    return first + (f" (+{more})" if more else "")


def cmd_mail_log(args: argparse.Namespace) -> int:
    from daemon.mail.queue import admin as queue_admin

    since = None
    if args.since is not None:
        try:
            since = parse_duration(args.since)
        except ValueError as err:
            sys.stderr.write(f"egen: --since: {err}\n")
            return EXIT_USAGE
    rows = with_database(args, lambda pool: queue_admin.read_log(
        pool, to=_address(args.to), sender=_address(args.sender), queue_id=args.id,
        since=since, limit=args.limit))
    if args.json:
        print_json(rows)
        return EXIT_OK
    for row in rows:
        row["time"] = row["at"]
        row["id"] = row["queue_id"]
        row["recipient"] = _recipient_cell(row)
        row["tls"] = row["tls"].split(" ", 1)[0] if row["tls"] else None
        if row["response"] is None:
            row["response"] = _note(row)
    print_table(rows, ["time", "id", "event", "recipient", "relay", "tls", "code",
                       "response"])
    if len(rows) == args.limit:
        sys.stderr.write(f"(showing the newest {args.limit}; --limit N shows more)\n")
    return EXIT_OK
