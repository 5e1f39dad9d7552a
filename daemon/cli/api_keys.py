"""`egen user api-key add|list|remove`: keys for the HTTP send API (POST /v3/mail/send),
each bound to an SMTP user of egen.toml. Parsing and printing only; the work is in
daemon.mail.send_api.keys."""

from __future__ import annotations

import argparse
import sys

from daemon.cli.common import load_settings, with_database
from daemon.cli.output import print_json, print_table

EXIT_OK, EXIT_FAILURE = 0, 1


def add_api_key_verbs(user_verbs: argparse._SubParsersAction,
                      common: argparse.ArgumentParser) -> None:
    keys = user_verbs.add_parser(
        "api-key", help="keys for the HTTP send API",
        description="Keys for POST /v3/mail/send (SendGrid's v3 API). A key sends as its "
                    "user: that user's allowed_senders and rate limit apply.")
    verbs = keys.add_subparsers(dest="key_verb", metavar="VERB", required=True)
    add = verbs.add_parser(
        "add", parents=[common], help="make a key for a user and print it once",
        description="Make a key for the SMTP user NAME of [smtp.users] and print it; it is "
                    "not shown again (only a hash is kept). It works at once.")
    add.add_argument("name", metavar="NAME", help="the user in [smtp.users.NAME]")
    add.add_argument("--label", default="", help="what the key is for, shown by list")
    add.add_argument("--json", action="store_true", help="print JSON")
    add.set_defaults(func=cmd_add)
    listing = verbs.add_parser("list", parents=[common], help="list keys (never the secret)",
                               description="List the send API keys, by user.")
    listing.add_argument("name", metavar="NAME", nargs="?", help="only this user's keys")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_list)
    remove = verbs.add_parser("remove", parents=[common], help="revoke a key",
                              description="Revoke a key by its id (or the whole key); "
                                          "running daemons refuse it within 5 seconds.")
    remove.add_argument("key_id", metavar="ID")
    remove.set_defaults(func=cmd_remove)


def cmd_add(args: argparse.Namespace) -> int:
    from daemon.mail.send_api.keys import add_key

    settings = load_settings(args)
    if args.name not in settings.smtp.users:
        known = ", ".join(sorted(settings.smtp.users)) or "none"
        sys.stderr.write(f"egen: no user {args.name!r} in [smtp.users] (users: {known}); "
                         "a key sends as a configured user\n")
        return EXIT_FAILURE
    try:
        key, token = with_database(args, lambda pool: add_key(pool, args.name, args.label))
    except ValueError as err:
        sys.stderr.write(f"egen: {err}\n")
        return EXIT_FAILURE
    if args.json:
        print_json({"id": key.id, "user": key.user_name, "label": key.label, "key": token})
    else:
        sys.stderr.write(f"key {key.id} for user {key.user_name}; it is shown only now:\n")
        sys.stdout.write(token + "\n")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from daemon.mail.send_api.keys import list_keys

    settings = load_settings(args)
    keys = with_database(args, lambda pool: list_keys(pool, args.name))
    rows = [{"id": k.id, "user": k.user_name, "label": k.label, "key": k.shown(),
             "created_at": k.created_at.isoformat(timespec="seconds"),
             "user_configured": k.user_name in settings.smtp.users} for k in keys]
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["id", "user", "label", "key", "created_at", "user_configured"])
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    from daemon.mail.send_api.keys import remove_key

    if not with_database(args, lambda pool: remove_key(pool, args.key_id)):
        sys.stderr.write(f"egen: no key {args.key_id!r}\n")
        return EXIT_FAILURE
    sys.stderr.write(f"removed key {args.key_id}\n")
    return EXIT_OK
