"""Memoizing stand-ins for the `inspect` module and `dir()` as aiosmtpd's SMTP.__init__
uses them.

aiosmtpd builds its tables of AUTH mechanisms, handler hooks and SMTP commands for every
connection by calling `inspect.getmembers()` on the protocol object and on the handler
(evaluating each of their few hundred attributes), `dir()` on both (sorting those names)
and `inspect.signature()` on the same EHLO hook. With one connection per message, the
usual pattern of applications that send mail, that was over a tenth of the event loop's
time. Which names exist depends only on the class (plus the few set on the object
itself), so they are listed once per class; the values are still read from the object,
as bound methods.

Installed only over the aiosmtpd release whose use of these this mirrors: `auth_*` names
are all it asks getmembers() for, and it only filters dir()'s names by prefix.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import aiosmtpd
import aiosmtpd.smtp

MIRRORED_RELEASE = "1.4.6"


class MemoizedInspect:
    def __init__(self) -> None:
        self._names: dict[type, tuple[str, ...]] = {}
        self._signatures: dict[tuple[Any, bool], inspect.Signature] = {}
        self._dirs: dict[type, frozenset[str]] = {}

    def getmembers(self, obj: object) -> list[tuple[str, Any]]:
        """The `auth_*` members of `obj` (SMTP.__init__ keeps no others)."""
        names = self._names.get(type(obj))
        if names is None:
            names = self._names[type(obj)] = tuple(
                name for name in dir(type(obj)) if name.startswith("auth_"))
        own = [name for name in getattr(obj, "__dict__", ()) if name.startswith("auth_")]
        return [(name, getattr(obj, name)) for name in (*names, *own)]

    def dir(self, obj: object) -> list[str]:
        """dir(obj)'s names (unsorted: aiosmtpd builds dicts from them)."""
        names = self._dirs.get(type(obj))
        if names is None:
            names = self._dirs[type(obj)] = frozenset(dir(type(obj)))
        own = getattr(obj, "__dict__", None)
        return [*names, *(n for n in own if n not in names)] if own else list(names)

    def signature(self, fn: Callable[..., Any]) -> inspect.Signature:
        key = (getattr(fn, "__func__", fn), hasattr(fn, "__self__"))
        found = self._signatures.get(key)
        if found is None:
            if len(self._signatures) >= 1000:
                self._signatures.clear()
            found = self._signatures[key] = inspect.signature(fn)
        return found


def install() -> bool:
    """Put the stand-in in place; False (and aiosmtpd left as it is) on other releases."""
    if aiosmtpd.__version__ != MIRRORED_RELEASE:
        return False
    memo = MemoizedInspect()
    aiosmtpd.smtp.inspect = memo  # type: ignore[assignment]
    # A module-level name is found before the builtin: only aiosmtpd.smtp's dir() changes.
    aiosmtpd.smtp.dir = memo.dir  # type: ignore[attr-defined]
    return True
