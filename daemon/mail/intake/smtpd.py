"""egen's SMTP protocol object: aiosmtpd's `SMTP` with the parts a relay needs fixed.

aiosmtpd 1.4.6 (its last release) parses commands well and carries the fixes for SMTP
smuggling and STARTTLS injection, but leaves these to its users:

- it advertises neither PIPELINING (it already reads pipelined commands) nor
  ENHANCEDSTATUSCODES, and most of its own replies lack enhanced codes: `push` adds
  them, so every reply after EHLO carries one (RFC 2034);
- on an implicit-TLS listener (465) it does not know the connection is encrypted and
  refuses AUTH (aiosmtpd issue #274): `connection_made` notices the TLS transport;
- its authenticator is synchronous, but checking an scrypt hash costs tens of
  milliseconds: AUTH PLAIN/LOGIN here await the handler's `authenticate` coroutine,
  which runs the hash in a thread;
- it reads DATA one line at a time (slow for large messages, issue #293): `smtp_DATA`
  reads up to each ".\\r\\n" with the stream's own search, enforces SIZE while reading and
  drops the data of an oversized message instead of keeping it; a bare LF anywhere in
  the data refuses the message (aiosmtpd keeps it, and `prepare` would turn "\\n.\\n"
  into a line that ends DATA at the next hop) unless the handler allows normalizing;
- without `handle_exception` an internal error answers "500 Error: (Class) message",
  which leaks internals and makes senders bounce mail: the handler must implement it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from base64 import b64decode
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, syntax

from daemon.mail.dsn_params import parse_envid, parse_notify, parse_orcpt
from daemon.mail.intake import smtpd_inspect

# aiosmtpd logs every command line at INFO (AUTH included) and deprecation chatter at
# WARNING; egen logs its own one line per event instead.
logging.getLogger("mail.log").setLevel(logging.CRITICAL)
smtpd_inspect.install()

_HAS_ENHANCED = re.compile(r"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3}( |$)")
# Enhanced codes for aiosmtpd's own replies that lack one, by reply code.
_ENHANCED = {
    "220": "2.0.0", "221": "2.0.0", "250": "2.0.0", "252": "2.0.0", "421": "4.4.2",
    "451": "4.3.0", "454": "4.7.0", "500": "5.5.2", "501": "5.5.4", "502": "5.5.1",
    "503": "5.5.1", "504": "5.5.4", "530": "5.7.0", "550": "5.0.0", "552": "5.3.4",
    "553": "5.1.3", "554": "5.7.0", "555": "5.5.4",
}
_END = b".\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")


_Parser = Callable[[str], str]


def _ret(value: str) -> str:
    if value.upper() not in ("FULL", "HDRS"):
        raise ValueError("RET must be FULL or HDRS")
    return value.upper()


_DSN_MAIL: dict[str, _Parser] = {"RET": _ret, "ENVID": parse_envid}
_DSN_RCPT: dict[str, _Parser] = {"NOTIFY": lambda v: ",".join(parse_notify(v)),
                                 "ORCPT": parse_orcpt}


def _path_end(text: str) -> int | None:
    """Index of the ">" closing a "<path>" at the start of `text` (quote-aware), -1 when
    the path has no angle brackets, None when the "<" is never closed."""
    if not text.startswith("<"):
        return -1
    quoted = False
    for i, char in enumerate(text):
        if char == '"' and text[i - 1] != "\\":
            quoted = not quoted
        elif char == ">" and not quoted:
            return i
    return None


class EgenSMTP(SMTP):
    """One instance per connection (aiosmtpd's protocol factory makes a new one)."""

    def __init__(self, handler: Any, *, allow_auth: bool, **kwargs: Any) -> None:
        if not allow_auth:
            kwargs["auth_exclude_mechanism"] = ["PLAIN", "LOGIN"]
        # aiosmtpd keeps the per-command line limits in a class-level dict that EHLO
        # raises and every new connection clears: one client connecting could shrink
        # another's MAIL limit mid-session. Each session gets its own.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        super().__init__(handler, **kwargs)
        self.allow_auth = allow_auth
        self.implicit_tls = False
        self._in_ehlo = False
        self._greeted = False

    # -- transport --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first and transport.get_extra_info("ssl_object") is not None:
            # Implicit TLS: the socket was encrypted before SMTP began, so AUTH is as
            # safe as after STARTTLS (aiosmtpd only counts STARTTLS).
            self.implicit_tls = True
            self._auth_require_tls = False

    @property
    def encrypted(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    def tls_description(self) -> str | None:
        """'TLSv1.3 TLS_AES_256_GCM_SHA384' for Received: and the envelope."""
        transport = self.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        if ssl_object is None:
            return None
        cipher = ssl_object.cipher()
        return f"{ssl_object.version()} {cipher[0]}" if cipher else ssl_object.version()

    # -- replies ----------------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        if not self._greeted:   # the 220 greeting carries no enhanced code (RFC 2034)
            self._greeted = True
        elif (isinstance(status, str) and not self._in_ehlo
              and not _HAS_ENHANCED.match(status)):
            code, sep, rest = status[:3], status[3:4], status[4:]
            enhanced = _ENHANCED.get(code)
            if enhanced and sep in (" ", "-", ""):
                status = f"{code}{sep or ' '}{enhanced} {rest}".rstrip()
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    # -- paths ------------------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Split `<path> params` without the stdlib header parser.

        aiosmtpd's version runs email's RFC 5322 parser per MAIL and RCPT (a large share
        of the loop's time per message), raises IndexError on `MAIL FROM:<`, and refuses
        the null sender `<>` that bounces must use. egen's handlers validate the address
        itself (policy.parse_path); here it is only cut out. The null path comes back as
        "<>" because aiosmtpd treats an empty address as a syntax error.
        """
        text = arg.strip()
        if not text:
            return "", ""
        end = _path_end(text)
        if end is None:
            return None, None
        if end < 0:
            path, _, rest = text.partition(" ")
            return path, rest.strip()
        path, rest = text[1:end], text[end + 1:].strip()
        if ":" in path and path.startswith("@"):   # source route: ignore it
            path = path.split(":", 1)[1]
        return (path or "<>"), rest

    # -- DSN parameters (RFC 3461) ------------------------------------------------------

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        peeled = await self._peel(arg, _DSN_MAIL)
        if peeled is None:
            return
        arg, found = peeled
        assert self.envelope is not None
        self.envelope.dsn_ret = found.get("RET")  # type: ignore[attr-defined]
        self.envelope.dsn_envid = found.get("ENVID")  # type: ignore[attr-defined]
        await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        peeled = await self._peel(arg, _DSN_RCPT)
        if peeled is None:
            return
        arg, found = peeled
        assert self.envelope is not None
        before = len(self.envelope.rcpt_tos)
        await super().smtp_RCPT(arg)
        if len(self.envelope.rcpt_tos) > before:
            per_rcpt = getattr(self.envelope, "dsn_rcpt", [])
            per_rcpt += [(None, None)] * (before - len(per_rcpt))
            per_rcpt.append((found.get("NOTIFY"), found.get("ORCPT")))
            self.envelope.dsn_rcpt = per_rcpt  # type: ignore[attr-defined]

    async def _peel(self, arg: str | None, keys: dict[str, _Parser]
                    ) -> tuple[str | None, dict[str, str]] | None:
        """Take the DSN parameters out of a MAIL/RCPT argument (aiosmtpd refuses any it
        does not know) and check them; None when a bad one was answered with 501."""
        if arg is None or "=" not in arg:
            return arg, {}
        head, _, tail = arg.partition(":")
        end = _path_end(tail.strip())
        if end is None or end < 0:
            return arg, {}
        stripped = tail.strip()
        path, params = stripped[:end + 1], stripped[end + 1:].split()
        kept, found = [], {}
        for param in params:
            key, eq, value = param.partition("=")
            parser = keys.get(key.upper())
            if parser is None or not eq:
                kept.append(param)
                continue
            if key.upper() in found:
                await self.push(f"501 5.5.4 {key.upper()} given twice")
                return None
            try:
                found[key.upper()] = parser(value)
            except ValueError as err:
                await self.push(f"501 5.5.4 Bad {key.upper()} parameter: {err}")
                return None
        return f"{head}:{path} {' '.join(kept)}".rstrip(), found

    # -- AUTH -------------------------------------------------------------------------

    async def _first_response(self, args: list[str], challenge: str | bytes) -> bytes | None:
        """The SASL initial response given with AUTH, or the answer to `challenge`;
        None when the client aborted or sent bad base64 (already answered)."""
        if len(args) == 1:
            blob = await self.challenge_auth(challenge)
            return None if blob is MISSING else blob  # type: ignore[return-value]
        try:
            return b64decode(args[1].encode(), validate=True)
        except ValueError:
            await self.push("501 5.5.2 Cannot decode base64")
            return None

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        blob = await self._first_response(args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push("501 5.5.2 AUTH PLAIN needs authzid NUL authcid NUL password")
            return AuthResult(success=False, handled=True)
        return await self._check_credentials(parts[1], parts[2])

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        login = await self._first_response(args, self.AuthLoginUsernameChallenge)
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        assert isinstance(password, bytes)
        return await self._check_credentials(login, password)

    async def _check_credentials(self, login: bytes, password: bytes) -> AuthResult:
        assert self.session is not None
        reply, user = await self.event_handler.authenticate(
            self, self.session, LoginPassword(login, password))
        if user is None:
            return AuthResult(success=False, handled=False, message=reply)
        return AuthResult(success=True, auth_data=user, message=reply)

    # -- DATA -------------------------------------------------------------------------

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content = await self._read_data()
        if content is None:
            self._set_post_data_state()
            limit = self.data_size_limit
            await self.push(f"552 5.3.4 Message size exceeds the {limit}-byte limit")
            return
        if content.count(b"\n") != content.count(b"\r\n"):
            refusal = self.event_handler.bare_newline_refusal(self.session)
            if refusal is not None:
                self._set_post_data_state()
                await self.push(refusal)
                return
            content = _BARE_LF.sub(b"\r\n", content)
        content = _unstuff(content)
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 2.0.0 OK" if status is MISSING else status)

    async def _read_data(self) -> bytes | None:
        """The message as sent, still dot-stuffed, or None (after draining it) when
        over SIZE.

        Only CRLF "." CRLF ends the data: a bare LF before or after the dot does not,
        which is what keeps SMTP smuggling out.
        """
        reader = self._reader
        limit = self.data_size_limit or 2**31
        saved = reader._limit  # type: ignore[attr-defined]
        # Let one search span the whole permitted message instead of one line.
        reader._limit = limit + len(_END) + 2  # type: ignore[attr-defined]
        parts: list[bytes] = []
        total = 0
        tail = b""          # the last two bytes consumed before the current chunk
        at_start = True
        try:
            while True:
                try:
                    chunk = await reader.readuntil(_END)
                except asyncio.LimitOverrunError as err:
                    chunk = await reader.read(err.consumed)
                    ended = False
                else:
                    before = (tail + chunk[:-len(_END)])[-2:]
                    ended = (at_start and chunk == _END) or before == b"\r\n"
                    if ended:
                        chunk = chunk[:-len(_END)]
                total += len(chunk)
                if total <= limit:
                    parts.append(chunk)
                else:
                    parts.clear()
                tail = (tail + chunk)[-2:]
                at_start = False
                if ended:
                    break
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("connection closed during DATA") from None
        finally:
            reader._limit = saved  # type: ignore[attr-defined]
        if total > limit:
            return None
        return b"".join(parts)


def _unstuff(data: bytes) -> bytes:
    """RFC 5321 4.5.2: the first "." of every line that starts with one goes."""
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n")
