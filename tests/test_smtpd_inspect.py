"""The memoized `inspect` stand-in must give aiosmtpd exactly the AUTH mechanisms and
EHLO hook handling that the real module gives it, bound to the right objects."""

from __future__ import annotations

import inspect
from typing import Any

import aiosmtpd.smtp
import pytest

from daemon.mail.intake import smtpd_inspect
from daemon.mail.intake.smtpd import EgenSMTP


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


def commands(smtp: EgenSMTP) -> tuple[dict[str, Any], dict[str, Any]]:
    """The hook and command tables aiosmtpd builds with dir()."""
    return smtp._handle_hooks, smtp._smtp_methods


@pytest.mark.parametrize("allow_auth", [True, False])
async def test_same_tables_as_with_the_real_inspect(monkeypatch: pytest.MonkeyPatch,
                                                    allow_auth: bool) -> None:
    handler = Handler()
    assert isinstance(aiosmtpd.smtp.inspect, smtpd_inspect.MemoizedInspect)
    fast = [EgenSMTP(handler, allow_auth=allow_auth) for _ in range(2)]
    monkeypatch.setattr(aiosmtpd.smtp, "inspect", inspect)
    monkeypatch.delattr(aiosmtpd.smtp, "dir")
    real = EgenSMTP(handler, allow_auth=allow_auth)
    want_methods, want_ehlo = tables(real)
    want_hooks, want_commands = commands(real)
    assert "EHLO" in want_hooks and "DATA" in want_commands and "STARTTLS" in want_commands
    for smtp in fast:
        hooks, smtp_methods = commands(smtp)
        assert hooks == want_hooks            # the same handler's bound methods
        assert smtp_methods.keys() == want_commands.keys()
        assert all(m.__self__ is smtp for m in smtp_methods.values())
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
    monkeypatch.delattr(aiosmtpd.smtp, "dir")
    assert smtpd_inspect.install() is False
    assert aiosmtpd.smtp.inspect is inspect and not hasattr(aiosmtpd.smtp, "dir")
