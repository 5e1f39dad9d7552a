"""How one alert message leaves: into egen's own mail queue (signed, retried and logged
like any mail), or as an HTTP POST to a webhook.

Webhooks are signed like Slack's and Stripe's: `X-Egen-Signature: sha256=<hex>` is the
HMAC-SHA256, under the channel's secret, of `<X-Egen-Timestamp>.<body>`, so a receiver can
refuse forgeries and replays of old deliveries. `X-Egen-Delivery` is the same on every
retry of one message, so a receiver can drop the duplicates at-least-once delivery makes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass

import aiohttp

from daemon import __version__
from daemon.mail.message import MessageRejected
from daemon.mail.queue import envelope
from daemon.mail.queue.submit import Refused, Submitter


@dataclass(frozen=True)
class Result:
    ok: bool
    detail: str           # the queue ID, the HTTP status line, or what went wrong
    retry: bool = True    # whether trying again could help


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


async def post(session: aiohttp.ClientSession, url: str, body: bytes, *, secret: str | None,
               delivery_id: str, timestamp: int, limit: float) -> Result:
    """POST the body; `limit` bounds the whole exchange, in seconds."""
    headers = {"Content-Type": "application/json", "User-Agent": f"egen/{__version__}",
               "X-Egen-Delivery": delivery_id, "X-Egen-Timestamp": str(timestamp)}
    if secret:
        headers["X-Egen-Signature"] = signature(secret, timestamp, body)
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=limit)) as response:
            text = (await response.content.read(200)).decode("utf-8", "replace")
            detail = f"HTTP {response.status}" + (f": {text.strip()}" if text.strip() else "")
            if 200 <= response.status < 300:
                return Result(True, detail)
            # 4xx other than timeouts and rate limits will not change by retrying, but a
            # receiver being redeployed answers 404 for a moment: retry all, up to the cap.
            return Result(False, detail)
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        return Result(False, f"{type(err).__name__}: {err}" if str(err) else
                      type(err).__name__)


async def queue_mail(submitter: Submitter | None, *, sender: str, recipients: list[str],
                     body: bytes, seed: str) -> Result:
    """Queue the alert mail under a queue ID derived from `seed`, so queueing it again
    after a crash stores it once."""
    if submitter is None:
        return Result(False, "mail intake is not running")
    try:
        queue_id = await submitter.submit(sender, recipients, body,
                                          queue_id=envelope.queue_id_for(seed))
    except Refused as err:
        return Result(False, err.reply, retry=err.reply.startswith("4"))
    except (MessageRejected, ValueError) as err:
        return Result(False, f"{type(err).__name__}: {err}", retry=False)
    except asyncio.CancelledError:
        raise
    return Result(True, f"queued as {queue_id}")
