"""When to try a deferred recipient again, and when to give up on it.

The defaults are Postfix's (minimal_backoff_time 300 s, maximal_backoff_time 4000 s rounded
to 70 minutes, maximal_queue_lifetime 5 days) because that is the schedule operators and
the senders behind them expect: first retry after ~5 minutes, then doubling (10, 20, 40
minutes), capped at ~70 minutes, until the message is 5 days old.

Jitter spreads retries out: after a receiving site has an outage, every message deferred
during it would otherwise come back in the same second, forever in lockstep. The clock and
the random source are parameters, so this module does no I/O and tests can pin both.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# 2**64 * first_retry dwarfs any sane max_backoff; capping the exponent keeps a recipient
# with an absurd attempt count (a bug, or a queue row edited by hand) from overflowing.
_MAX_EXPONENT = 64


@dataclass(frozen=True)
class RetryPolicy:
    """The retry schedule of `[delivery]`; all durations are in seconds."""

    first_retry: float = 300.0            # Postfix minimal_backoff_time
    max_backoff: float = 4200.0           # 70 minutes; Postfix maximal_backoff_time
    lifetime: float = 5 * 86400.0         # give up after; Postfix maximal_queue_lifetime
    jitter: float = 0.1                   # each delay is scaled by a factor in 1 +- jitter
    delay_warning: float | None = None    # send a "delayed" DSN after this long; off if None

    def __post_init__(self) -> None:
        # Validated here so a bad config stops the daemon at start, naming the key.
        for name in ("first_retry", "max_backoff", "lifetime", "jitter"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, not {value}")
        if self.first_retry <= 0:
            raise ValueError(f"first_retry must be positive, not {self.first_retry}")
        if self.max_backoff < self.first_retry:
            raise ValueError(f"max_backoff ({self.max_backoff}) must be at least "
                             f"first_retry ({self.first_retry})")
        if self.lifetime <= 0:
            raise ValueError(f"lifetime must be positive, not {self.lifetime}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be at least 0 and below 1, not {self.jitter}")
        if self.delay_warning is not None and not (
                math.isfinite(self.delay_warning) and self.delay_warning > 0):
            raise ValueError(f"delay_warning must be positive (or unset), "
                             f"not {self.delay_warning}")


def backoff(policy: RetryPolicy, attempts: int) -> float:
    """The delay before the next attempt, before jitter: first_retry * 2**(attempts-1), capped.

    `attempts` counts the failed attempts so far, so the first retry (after one failure)
    waits `first_retry`.
    """
    if attempts < 1:
        raise ValueError(f"attempts counts failed attempts and must be at least 1, "
                         f"not {attempts}")
    delay = policy.first_retry * 2.0 ** min(attempts - 1, _MAX_EXPONENT)
    return min(delay, policy.max_backoff)


def next_attempt(policy: RetryPolicy, attempts: int, *, received_at: float, now: float,
                 rng: random.Random) -> float | None:
    """The UNIX time of the next attempt after `attempts` failures, or None to give up.

    None means the next attempt would fall after `received_at + lifetime`: the recipient
    has expired and gets a "failed" DSN (status 4.4.7) now rather than one more try. The
    jitter applies after the cap, so at the cap retries land in 70 min +- 10 %.
    """
    delay = backoff(policy, attempts)
    if policy.jitter:
        delay *= 1.0 + rng.uniform(-policy.jitter, policy.jitter)
    when = now + delay
    if when > retry_until(policy, received_at=received_at):
        return None
    return when


def retry_until(policy: RetryPolicy, *, received_at: float) -> float:
    """When a message received at `received_at` expires: the DSN's Will-Retry-Until."""
    return received_at + policy.lifetime


def expired(policy: RetryPolicy, *, received_at: float, now: float) -> bool:
    """True once the message has been queued for `lifetime`: stop trying, bounce it."""
    return now >= retry_until(policy, received_at=received_at)


def warning_due(policy: RetryPolicy, *, received_at: float, now: float, warned: bool) -> bool:
    """True when a "delayed" DSN should go out now.

    At most one warning per recipient (`warned` records that it was sent, like Postfix's
    delay_warning_time), none when warnings are off, and none for an expired recipient:
    that one gets the failure DSN instead, and a warning saying "still trying" would lie.
    """
    if policy.delay_warning is None or warned:
        return False
    if expired(policy, received_at=received_at, now=now):
        return False
    return now >= received_at + policy.delay_warning
