"""`POST /v3/mail/send`: SendGrid's v3 send API in front of egen's own submission path.

An application written for SendGrid only changes its host and key. What it sends then
goes exactly where SMTP submission goes: the user's allowed senders for the envelope
and for every From:, the per-address and per-user rate limits, `prepare` and DKIM
signing, and one append to the mail journal for all the request's messages, so `202`
means every one of them is durable and an error means none is queued. Answers use
SendGrid's error shape, `{"errors": [{"message": ..., "field": ...}]}`, and codes: 400
bad body, 401 bad key, 403 sender not allowed, 413 too large, 429 rate limited, 503
queue unavailable; `X-Message-Id` carries the first queue id and `X-Egen-Queue-Ids` all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from daemon.logs import fields, get_logger
from daemon.mail.intake.policy import User, check_header_from, check_mail_from
from daemon.mail.message import MessageRejected, prepare, received_header
from daemon.mail.queue import envelope as queue_record
from daemon.mail.queue.submit import Origin, Refused, Signed
from daemon.mail.send_api.keys import ApiKeyRegistry, KeysUnavailable
from daemon.mail.send_api.mime import build
from daemon.mail.send_api.model import FieldError, SendRequest, SendRequestInvalid
from daemon.mail.send_api.request import each_message, parse
from daemon.web.request_body import HttpError, read_body

if TYPE_CHECKING:
    from daemon.mail.intake.handler import IntakeContext

maillog = get_logger("maillog")
PATH = "/v3/mail/send"
# Refusals of the submission path and the status SendGrid would answer for them.
# What all the messages of one request may come to, in smtp.max_message_size: bounds
# the memory one request holds (SendGrid's own bound is 30 MB of request).
MESSAGES_PER_REQUEST_SIZE = 4
_REFUSED_STATUS = {"no_dkim_key": 403, "bad_message": 400}


class SendFailed(Exception):
    def __init__(self, status: int, reason: str, errors: list[FieldError],
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(errors[0].message)
        self.status = status
        self.reason = reason
        self.errors = errors
        self.headers = headers or {}


def _fail(status: int, reason: str, message: str, where: str | None = None,
          headers: dict[str, str] | None = None) -> SendFailed:
    return SendFailed(status, reason, [FieldError(message, where)], headers)


def _answer(status: int, errors: list[FieldError], headers: dict[str, str]) -> web.Response:
    return web.Response(body=orjson.dumps({"errors": [e.as_json() for e in errors]}),
                        status=status, headers=headers, content_type="application/json")


def _text(policy_message: str) -> str:
    """A policy refusal without its enhanced status code ("5.7.1 ...")."""
    return policy_message.partition(" ")[2] or policy_message


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _fail(401, "no_key", "Authorization: Bearer <api key> is required",
                    headers={"WWW-Authenticate": 'Bearer realm="egen"'})
    return token.strip()


class SendApi:
    def __init__(self, keys: ApiKeyRegistry, context: Callable[[], IntakeContext | None],
                 registry: CollectorRegistry) -> None:
        self.keys = keys
        self.context = context
        self.requests = Counter("egen_send_api_requests_total",
                                "Requests to POST /v3/mail/send by HTTP status and reason.",
                                ["status", "reason"], registry=registry)

    def mount(self, app: web.Application) -> None:
        app.router.add_post(PATH, self.send)

    async def send(self, request: web.Request) -> web.Response:
        client = request.remote or "unknown"
        user_name = "-"
        try:
            ctx = self.context()
            if ctx is None:
                raise _fail(503, "starting", "egen is starting; try again shortly",
                            headers={"Retry-After": "5"})
            user = await self._user(ctx, _bearer(request))
            user_name = user.name
            status, headers = await self._send(request, ctx, user, client)
        except SendFailed as failed:
            self.requests.labels(str(failed.status), failed.reason).inc()
            maillog.info("rejected", extra=fields(
                client=client, via="api", user=user_name, reason=failed.reason,
                status=failed.status,
                errors="; ".join(f"{e.field or '-'}: {e.message}" for e in failed.errors)))
            return _answer(failed.status, failed.errors, failed.headers)
        self.requests.labels(str(status), "").inc()
        return web.Response(status=status, headers=headers)

    async def _send(self, request: web.Request, ctx: IntakeContext, user: User,
                    client: str) -> tuple[int, dict[str, str]]:
        kind = request.headers.get("Content-Type", "application/json")
        if kind.partition(";")[0].strip().lower() != "application/json":
            raise _fail(415, "content_type", f"Content-Type must be application/json, not "
                        f"{kind[:100]}")
        limit = 2 * ctx.smtp.max_message_size + 65536     # base64 in JSON, plus escaping
        try:
            body = await read_body(request, limit)
        except HttpError:
            raise _fail(413, "too_large", f"the request body is larger than {limit} bytes "
                        "(twice smtp.max_message_size, plus 64 KiB)") from None
        try:
            parsed = parse(body)
        except SendRequestInvalid as err:
            raise SendFailed(400, "bad_request", err.errors) from None
        self._check_senders(parsed, user)
        # Before the work of building and signing, and in sandbox mode too: a request
        # that is only checked costs as much as one that is sent.
        self._take_rate(ctx, user, client, len(parsed.personalizations))
        if parsed.sandbox:      # SendGrid's: everything checked, nothing sent
            await self._sign_all(ctx, parsed, user, client, tls=request.secure)
            return 200, {}
        signed = await self._sign_all(ctx, parsed, user, client, tls=request.secure)
        try:
            await ctx.submitter.queue(signed)
        except Refused as refused:
            raise self._refusal(refused, None) from None
        ids = [s.record.queue_id for s in signed]
        # Not part of the mail (SendGrid hands them to its event webhooks), but an
        # application's own bookkeeping: kept in the log next to the queue ids.
        noted = {"client": client, "user": user.name, "queue_ids": ",".join(ids)}
        if parsed.categories:
            noted["categories"] = ",".join(parsed.categories)
        if parsed.custom_args:
            noted["custom_args"] = orjson.dumps(parsed.custom_args).decode()
        maillog.info("api request", extra=fields(**noted))
        return 202, {"X-Message-Id": ids[0], "X-Egen-Queue-Ids": ",".join(ids)}

    async def _user(self, ctx: IntakeContext, token: str) -> User:
        try:
            name = await self.keys.user_for(token)
        except KeysUnavailable:
            raise _fail(503, "keys_unavailable", "the key is new to this node and the "
                        "database cannot be asked about it now; try again shortly",
                        headers={"Retry-After": "5"}) from None
        user = ctx.users.get(name) if name is not None else None
        if user is None:
            # Also when the key's user has been taken out of egen.toml.
            raise _fail(401, "bad_key", "The provided authorization grant is invalid, "
                        "expired, or revoked")
        return user

    @staticmethod
    def _check_senders(parsed: SendRequest, user: User) -> None:
        """The envelope senders first, as SMTP checks MAIL FROM before rates and DATA."""
        for index, p, sender, _ in each_message(parsed):
            decision = check_mail_from(user, sender.email)
            if not decision.ok:
                where = f"personalizations.{index}.from.email" if p.sender else "from.email"
                raise _fail(403, "sender_not_allowed", _text(decision.message), where)

    async def _sign_all(self, ctx: IntakeContext, parsed: SendRequest, user: User,
                        client: str, *, tls: bool) -> list[Signed]:
        """Every message checked, prepared and signed before any is queued."""
        signed = []
        now = time.time()
        total = 0
        budget = MESSAGES_PER_REQUEST_SIZE * ctx.smtp.max_message_size
        for index, p, sender, subject in each_message(parsed):
            at = f"personalizations.{index}"
            from_field = f"{at}.from.email" if p.sender else "from.email"
            if len(p.recipients) > ctx.smtp.max_recipients:
                raise _fail(400, "too_many_recipients", f"{len(p.recipients)} recipients in "
                            f"one personalization; at most {ctx.smtp.max_recipients} "
                            "(smtp.max_recipients)", at)
            try:
                # In a thread: a large attachment takes a good part of a second to
                # encode, which the loop must spend answering others.
                raw = await asyncio.to_thread(build, parsed, index, sender, subject)
            except SendRequestInvalid as err:
                raise SendFailed(400, "bad_request", err.errors) from None
            if len(raw) > ctx.smtp.max_message_size:
                raise _fail(413, "too_large", f"the message is {len(raw)} bytes; at most "
                            f"{ctx.smtp.max_message_size} (smtp.max_message_size)", at)
            total += len(raw)
            if total > budget:
                raise _fail(413, "too_large", f"the request's messages come to more than "
                            f"{budget} bytes ({MESSAGES_PER_REQUEST_SIZE} times "
                            "smtp.max_message_size); split the request", "personalizations")
            queue_id = queue_record.new_queue_id()
            received = received_header(
                helo="api", client_ip=client, client_rdns=None, hostname=ctx.hostname,
                queue_id=queue_id, protocol="HTTPS" if tls else "HTTP", tls=None,
                auth_user=user.name,
                recipient=p.recipients[0] if len(p.recipients) == 1 else None, now=now)
            try:
                prepared = await asyncio.to_thread(prepare, raw, received=received,
                                                   hostname=ctx.hostname, now=now)
            except MessageRejected as err:
                raise _fail(400, "bad_message", err.message, at) from None
            decision = check_header_from(user, prepared.from_addresses)
            if not decision.ok:
                raise _fail(403, "from_not_allowed", _text(decision.message), from_field)
            origin = Origin(client_ip=client, helo="api", auth_user=user.name,
                            tls="HTTPS" if tls else None, smtputf8=False, body_8bit=False)
            try:
                signed.append(await ctx.submitter.sign(
                    queue_id=queue_id, sender=sender.email, recipients=p.recipients,
                    prepared=prepared, origin=origin, now=now))
            except Refused as refused:
                raise self._refusal(refused, from_field) from None
        return signed

    @staticmethod
    def _take_rate(ctx: IntakeContext, user: User, client: str, count: int) -> None:
        """One token per message, as SMTP takes one per MAIL FROM; every bucket is
        checked before any is taken from, so a refusal costs nothing."""
        buckets = ((ctx.client_rate, client, f"from {client}", "rate_client"),
                   (ctx.user_rate, user.name, f"from user {user.name}", "rate_user"))
        for bucket, key, what, reason in buckets:
            assert bucket.burst is not None      # mail buckets are built with their limits
            if count > bucket.burst:
                raise _fail(429, "rate_burst", f"{count} messages in one request are more "
                            f"than the {bucket.burst:.0f} the rate limit allows at once; "
                            "split the request", "personalizations")
            wait = bucket.retry_after(key, count)
            if wait > 0:
                raise _fail(429, reason, f"Too much mail {what}; try again in {wait:.0f}s",
                            headers={"Retry-After": str(max(1, round(wait)))})
        for bucket, key, _, _ in buckets:
            bucket.take(key, count)

    @staticmethod
    def _refusal(refused: Refused, where: str | None) -> SendFailed:
        code, _, text = refused.reply.partition(" ")
        status = _REFUSED_STATUS.get(refused.reason, 503 if code.startswith("4") else 400)
        headers = {"Retry-After": "30"} if status == 503 else {}
        return _fail(status, refused.reason, text, where if status != 503 else None,
                     headers)
