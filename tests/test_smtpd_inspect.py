"""The memoized `inspect` stand-in must give aiosmtpd exactly the AUTH mechanisms and
EHLO hook handling that the real module gives it, bound to the right objects."""

from __future__ import annotations

import inspect
from typing import Any

import aiosmtpd.smtp
import pytest

from daemon.mail import smtpd_inspect
from daemon.mail.smtpd import EgenSMTP


class Handler:
    auth_EXTRA = None      # a handler attribute aiosmtpd would take for a mechanism

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        return responses

    async def auth_XTEST(self, server: Any, args: list[str]) -> None:
        return None


def tables(smtp: EgenSMTP) -> tuple[dict[str, tuple[Any, bool]], str]:
    methods = {name: (getattr(attr.method, "__self__", None), attr.is_builtin)
               for name, attr in smtp._auth_methods.items()}
    return methods, smtp._ehlo_hook_ver


@pytest.mark.parametrize("allow_auth", [True, False])
async def test_same_tables_as_with_the_real_inspect(monkeypatch: pytest.MonkeyPatch,
                                                    allow_auth: bool) -> None:
    handler = Handler()
    assert isinstance(aiosmtpd.smtp.inspect, smtpd_inspect.MemoizedInspect)
    fast = [EgenSMTP(handler, allow_auth=allow_auth) for _ in range(2)]
    monkeypatch.setattr(aiosmtpd.smtp, "inspect", inspect)
    real = EgenSMTP(handler, allow_auth=allow_auth)
    want_methods, want_ehlo = tables(real)
    for smtp in fast:
        methods, ehlo = tables(smtp)
        assert ehlo == want_ehlo == "new"
        assert methods.keys() == want_methods.keys()
        for name, (owner, builtin) in methods.items():
            want_owner, want_builtin = want_methods[name]
            assert builtin == want_builtin
            # Bound to this connection's protocol object (or the shared handler).
            expected = {id(handler): handler, id(None): None}.get(id(want_owner), smtp)
            assert owner is expected
    assert ("PLAIN" in want_methods) is allow_auth and "XTEST" in want_methods


def test_not_installed_over_another_release(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiosmtpd, "__version__", "1.5.0")
    monkeypatch.setattr(aiosmtpd.smtp, "inspect", inspect)
    assert smtpd_inspect.install() is False
    assert aiosmtpd.smtp.inspect is inspect
