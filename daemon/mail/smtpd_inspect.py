"""A memoizing stand-in for the `inspect` module as aiosmtpd's SMTP.__init__ uses it.

aiosmtpd builds its table of AUTH mechanisms for every connection by calling
`inspect.getmembers()` on the protocol object and on the handler (evaluating each of
their few hundred attributes) and `inspect.signature()` on the same EHLO hook. With one
connection per message, the usual pattern of applications that send mail, that was a
tenth of the event loop's time. Which names exist depends only on the class, so they are
looked up once per class; the values are still read from the object, as bound methods.

Installed only over the aiosmtpd release whose use of `inspect` this mirrors: `auth_*`
names are all it asks getmembers() for.
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

    def getmembers(self, obj: object) -> list[tuple[str, Any]]:
        """The `auth_*` members of `obj` (SMTP.__init__ keeps no others)."""
        names = self._names.get(type(obj))
        if names is None:
            names = self._names[type(obj)] = tuple(
                name for name in dir(type(obj)) if name.startswith("auth_"))
        own = [name for name in getattr(obj, "__dict__", ()) if name.startswith("auth_")]
        return [(name, getattr(obj, name)) for name in (*names, *own)]

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
    aiosmtpd.smtp.inspect = MemoizedInspect()  # type: ignore[assignment]
    return True
