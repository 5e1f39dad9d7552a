"""Operator verbs for the mail relay's credentials and keys: `egen user hash-password`,
`egen user api-key` (in daemon.cli.api_keys), `egen dkim keygen`, `egen dkim record`.
Parsing and printing only; the work is in daemon.passwords and daemon.mail.dkimkeys."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.cli.api_keys import add_api_key_verbs
from daemon.cli.output import print_json
from daemon.config import load, resolve_path

if TYPE_CHECKING:
    from daemon.mail.dkimkeys import DkimKey

EXIT_OK, EXIT_FAILURE = 0, 1


def add_mail_verbs(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    user = verbs.add_parser("user", help="SMTP users", description="SMTP users.")
    user_verbs = user.add_subparsers(dest="user_verb", metavar="VERB", required=True)
    hashing = user_verbs.add_parser(
        "hash-password", help="print a password hash for [smtp.users.NAME]",
        description="Read a password (prompted twice, or one line on stdin when it is not "
                    "a terminal) and print its scrypt hash for password_hash in egen.toml.")
    hashing.set_defaults(func=cmd_hash_password)
    add_api_key_verbs(user_verbs, common)

    dkim = verbs.add_parser("dkim", help="DKIM keys and records",
                            description="DKIM keys and their DNS records.")
    dkim_verbs = dkim.add_subparsers(dest="dkim_verb", metavar="VERB", required=True)
    keygen = dkim_verbs.add_parser(
        "keygen", help="create a private key and print its DNS record",
        description="Write a new private key (mode 0600; an existing file is never "
                    "overwritten) and print the TXT record to publish. Add the key to "
                    "[[dkim.keys]] once the record is published.")
    keygen.add_argument("--domain", required=True, help="signing domain (d=)")
    keygen.add_argument("--selector", required=True, help="selector (s=)")
    keygen.add_argument("--algorithm", choices=["rsa", "ed25519"], default="rsa")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    keygen.add_argument("--out", metavar="PATH",
                        help="key file (default: ./<domain>.<selector>.pem)")
    keygen.add_argument("--json", action="store_true", help="print the record as JSON")
    keygen.set_defaults(func=cmd_dkim_keygen)

    record = dkim_verbs.add_parser(
        "record", parents=[common], help="print the DNS records of the configured keys",
        description="Print the TXT record of every key in [[dkim.keys]] (zone-file "
                    "syntax, or with --json a list of objects with name, type, value).")
    record.add_argument("--json", action="store_true", help="print JSON")
    record.set_defaults(func=cmd_dkim_record)


def read_password() -> str:
    """A password from a prompt (asked twice), or one line of stdin when it is not a
    terminal."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise SystemExit("egen: the passwords differ")
    return first


def cmd_hash_password(args: argparse.Namespace) -> int:
    from daemon.passwords import hash_password

    password = read_password()
    if not password:
        sys.stderr.write("egen: empty password\n")
        return EXIT_FAILURE
    sys.stdout.write(hash_password(password) + "\n")
    return EXIT_OK


def _record(key: DkimKey) -> dict[str, str]:
    return {"name": key.dns_name(), "type": "TXT", "value": key.dns_value()}


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    from daemon.mail.dkimkeys import (
        DkimError,
        DkimKey,
        generate_key,
        write_private_key,
        zone_line,
    )

    path = Path(args.out or f"{args.domain}.{args.selector}.pem")
    try:
        private = generate_key(args.algorithm, bits=args.bits)
        key = DkimKey(domain=args.domain, selector=args.selector, algorithm=args.algorithm,
                      private_key=private, path=path)
        write_private_key(private, path)
    except (DkimError, ValueError) as err:
        sys.stderr.write(f"egen: {err}\n")
        return EXIT_FAILURE
    if args.json:
        print_json(_record(key))
    else:
        sys.stderr.write(f"wrote {path}; publish this record, then add the key to "
                         f"[[dkim.keys]]:\n")
        sys.stdout.write(zone_line(key) + "\n")
    return EXIT_OK


def cmd_dkim_record(args: argparse.Namespace) -> int:
    from daemon.mail.dkimkeys import DkimError, load_key, zone_line

    settings = load(resolve_path(getattr(args, "config", None)))
    keys = []
    for entry in settings.dkim.keys:
        if entry.generate and not entry.key_file.exists():
            sys.stderr.write(f"egen: {entry.key_file} does not exist yet; egen creates it on "
                             f"first start (generate = true)\n")
            return EXIT_FAILURE
        try:
            keys.append(load_key(entry.key_file, domain=entry.domain, selector=entry.selector))
        except DkimError as err:
            sys.stderr.write(f"egen: {err}\n")
            return EXIT_FAILURE
    if args.json:
        print_json([_record(key) for key in keys])
    else:
        for key in keys:
            sys.stdout.write(zone_line(key) + "\n")
    return EXIT_OK
