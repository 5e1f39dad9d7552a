"""The `[web]` section of egen.toml: the pages' sessions, the sign-in rate limit, and
users kept in the config (synced into the database at start, like projects)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated

from daemon.passwords import parse_hash
from daemon.typedtoml import DURATION, Invalid, Secret

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}")


def check_user_name(name: str, where: str) -> None:
    if not USER_NAME.fullmatch(name):
        raise Invalid(where, f"{name!r} is not a usable user name: up to 64 letters, "
                             "digits, '.', '@', '-' and '_', starting with a letter or digit")


@dataclass(frozen=True)
class WebUserSettings:
    # From `egen user hash-password` (scrypt; argon2 with argon2-cffi installed).
    password_hash: Secret
    admin: bool = False

    def check(self) -> None:
        try:
            parse_hash(self.password_hash.reveal())
        except ValueError as err:
            raise Invalid("password_hash", str(err)) from None


@dataclass(frozen=True)
class WebSettings:
    # false: no pages (the ingest endpoints, the operator API and /metrics stay).
    enabled: bool = True
    # Mark the session cookie Secure even when egen itself serves plain HTTP (behind a
    # TLS-terminating reverse proxy); requests that arrive over TLS always get it.
    secure_cookies: bool = False
    # A session ends after this long without a request, and in any case this long after
    # signing in.
    session_idle: Annotated[float, DURATION] = 12 * 3600.0
    session_lifetime: Annotated[float, DURATION] = 7 * 86400.0
    # Failed sign-ins counted over `login_window`: at `login_failures_per_account` for one
    # user name, or `login_failures_per_address` from one address, further attempts are
    # refused (429) until older failures leave the window; the block never outlasts it.
    login_window: Annotated[float, DURATION] = 900.0
    login_failures_per_account: int = 10
    login_failures_per_address: int = 50
    # Users kept here (with `egen web user add`, users can also live only in the
    # database). Their passwords change here, not with `egen web user passwd`.
    users: dict[str, WebUserSettings] = field(default_factory=dict)

    def check(self) -> None:
        if self.session_idle <= 0 or self.session_lifetime <= 0:
            raise Invalid("session_idle", "session_idle and session_lifetime must be positive")
        if self.session_idle > self.session_lifetime:
            raise Invalid("session_idle", "must not exceed web.session_lifetime")
        if self.login_window <= 0:
            raise Invalid("login_window", "must be positive")
        if self.login_failures_per_account < 1:
            raise Invalid("login_failures_per_account", "must be at least 1")
        if self.login_failures_per_address < 1:
            raise Invalid("login_failures_per_address", "must be at least 1")
        for name in self.users:
            check_user_name(name, f"users.{name}")
