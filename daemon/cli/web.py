"""Operator verbs for the web pages' accounts: `egen web user add|list|remove|passwd`.
Parsing and printing only; the SQL is in daemon.web.accounts.

Passwords are read from a prompt (twice) or, when stdin is not a terminal, as one line
from it, so scripts can pipe one in; never from the command line, where `ps` shows it.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from daemon.cli.common import with_database
from daemon.cli.mail import read_password
from daemon.cli.output import print_json, print_table

if TYPE_CHECKING:
    import asyncpg

EXIT_OK, EXIT_FAILURE = 0, 1


def add_web_verbs(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    web = verbs.add_parser("web", help="the web pages' accounts",
                           description="Accounts of the web pages (issues, events, projects).")
    nouns = web.add_subparsers(dest="web_noun", metavar="NOUN", required=True)
    user = nouns.add_parser("user", help="people who may sign in",
                            description="People who may sign in to the web pages.")
    user_verbs = user.add_subparsers(dest="web_user_verb", metavar="VERB", required=True)

    add = user_verbs.add_parser(
        "add", parents=[common], help="add a user (password from a prompt or stdin)",
        description="Add a user who may sign in to the web pages. The password is asked "
                    "twice, or read as one line from stdin when it is not a terminal.")
    add.add_argument("name", metavar="NAME", help="user name")
    add.add_argument("--admin", action="store_true",
                     help="may create projects and keys")
    add.set_defaults(func=cmd_add)

    listing = user_verbs.add_parser(
        "list", parents=[common], help="list users and their sessions",
        description="List the users: admin or not, from the config or the database, open "
                    "sessions and when one was last used.")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_list)

    remove = user_verbs.add_parser(
        "remove", parents=[common], help="remove a user and end their sessions",
        description="Remove a user added with `egen web user add`; their sessions end at "
                    "once. Users kept in the config are removed there.")
    remove.add_argument("name", metavar="NAME", help="user name")
    remove.set_defaults(func=cmd_remove)

    passwd = user_verbs.add_parser(
        "passwd", parents=[common], help="set a user's password and end their sessions",
        description="Set a new password (from a prompt or stdin); every session of the "
                    "user ends, so a leaked session cookie stops working too.")
    passwd.add_argument("name", metavar="NAME", help="user name")
    passwd.set_defaults(func=cmd_passwd)


def _fail(message: str) -> int:
    sys.stderr.write(f"egen: {message}\n")
    return EXIT_FAILURE


def cmd_add(args: argparse.Namespace) -> int:
    from daemon.web import accounts

    password = read_password()

    async def add(pool: asyncpg.Pool) -> Any:
        return await accounts.add_user(pool, args.name, password, admin=args.admin)

    try:
        user = with_database(args, add)
    except accounts.AccountError as err:
        return _fail(str(err))
    sys.stdout.write(f"user {user.name} added{' (admin)' if user.admin else ''}\n")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from daemon.web import accounts

    users = with_database(args, accounts.list_users)
    if args.json:
        print_json(users)
        return EXIT_OK
    rows = [{**u, "admin": "yes" if u["admin"] else "no",
             "kept_in": "config" if u["from_config"] else "database"} for u in users]
    print_table(rows, ["name", "admin", "kept_in", "sessions", "last_seen", "created_at"])
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    from daemon.web import accounts

    try:
        with_database(args, lambda pool: accounts.remove_user(pool, args.name))
    except accounts.AccountError as err:
        return _fail(str(err))
    sys.stdout.write(f"user {args.name} removed\n")
    return EXIT_OK


def cmd_passwd(args: argparse.Namespace) -> int:
    from daemon.web import accounts

    password = read_password()
    try:
        ended = with_database(args, lambda pool: accounts.set_password(pool, args.name,
                                                                         password))
    except accounts.AccountError as err:
        return _fail(str(err))
    sys.stdout.write(f"password of {args.name} changed; {ended} session"
                     f"{'' if ended == 1 else 's'} ended\n")
    return EXIT_OK
