"""Per-key rate limits: token buckets (SMTP intake and the send API per client and user,
the error tracker per project) and the SMTP AUTH-failure blocker.

Both keep state per key (client IP, user name) in a bounded LRU table (DESIGN.md contract
3): a flood of distinct keys evicts the least recently seen ones instead of growing memory.
Eviction forgets a key's history, which errs towards letting a long-idle client through;
`max_keys` should comfortably exceed the number of clients that are active at once.

The clock is injectable so tests move time by hand; nothing here sleeps or does I/O.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

Clock = Callable[[], float]


def _check_max_keys(max_keys: int) -> None:
    if max_keys < 1:
        raise ValueError(f"max_keys must be at least 1, not {max_keys}")


def _check_limits(rate: float, burst: float) -> None:
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be a positive number of tokens per second, not {rate}")
    if not burst > 0 or not math.isfinite(burst):
        raise ValueError(f"burst must be positive, not {burst}")


class TokenBucket:
    """`rate` tokens per `per` seconds (default: per second) refill each key's bucket up
    to `burst`.

    A key not in the table has a full bucket, so a new client may send `burst` at once.
    `rate` and `burst` may instead be given with each call (`charge`, `take_upto`), for
    keys whose limits differ (the error tracker's projects); a bucket built without them
    serves only such calls.
    """

    def __init__(self, *, rate: float | None = None, burst: float | None = None,
                 per: float = 1.0, max_keys: int = 10_000,
                 clock: Clock = time.monotonic) -> None:
        if (rate is None) != (burst is None):
            raise ValueError("rate and burst go together: give both or neither")
        if rate is not None and burst is not None:
            _check_limits(rate, burst)
        if not per > 0 or not math.isfinite(per):
            raise ValueError(f"per must be a positive number of seconds, not {per}")
        _check_max_keys(max_keys)
        self.rate = rate
        self.burst = burst
        self.per = per
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # tokens, at

    def __len__(self) -> int:
        return len(self._buckets)

    def retune(self, *, rate: float, burst: float) -> None:
        """New limits from a reload; every key keeps what it has used (up to the new
        burst), so a SIGHUP is no way around a limit."""
        _check_limits(rate, burst)
        self.rate, self.burst = rate, burst

    def _limits(self, rate: float | None, burst: float | None) -> tuple[float, float]:
        """(rate, burst) for one call: the ones given, else the bucket's own."""
        if rate is None or burst is None:
            if rate is not None or burst is not None:
                raise ValueError("rate and burst go together: give both or neither")
            if self.rate is None or self.burst is None:
                raise ValueError("this bucket has no limits of its own: give rate and burst")
            return self.rate, self.burst
        _check_limits(rate, burst)
        return rate, burst

    def _tokens(self, key: Hashable, now: float, rate: float, burst: float) -> float:
        """Tokens in the key's bucket at `now`: below zero while a batch's debt lasts."""
        state = self._buckets.get(key)
        if state is None:
            return burst
        tokens, at = state
        # max(): an injected clock that steps back must not drain the bucket.
        return min(burst, tokens + max(0.0, now - at) * rate / self.per)

    def _store(self, key: Hashable, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    @staticmethod
    def _check_amount(amount: float, burst: float) -> None:
        if amount < 0 or amount > burst:
            raise ValueError(f"amount {amount} can never be taken from a bucket of {burst}")

    def take(self, key: Hashable, amount: float = 1.0) -> bool:
        """Consume `amount` tokens if they are there; a refusal consumes nothing."""
        rate, burst = self._limits(None, None)
        self._check_amount(amount, burst)
        now = self._clock()
        tokens = self._tokens(key, now, rate, burst)
        allowed = tokens >= amount
        if allowed:
            tokens -= amount
        self._store(key, tokens, now)
        return allowed

    def retry_after(self, key: Hashable, amount: float = 1.0) -> float:
        """Seconds until `take(key, amount)` would succeed (0.0 if it would now).

        For the text of a 451 reply; it does not count as a use of the key.
        """
        rate, burst = self._limits(None, None)
        self._check_amount(amount, burst)
        missing = amount - self._tokens(key, self._clock(), rate, burst)
        return max(0.0, missing * self.per / rate)

    def charge(self, key: Hashable, amount: float, *, rate: float | None = None,
               burst: float | None = None) -> float | None:
        """Take `amount` tokens for a batch, which may be larger than `burst`: it is taken
        when the tokens are there, and a batch larger than the burst is taken whenever the
        bucket is not in debt (holds at least one token), leaving it in debt, so a big
        batch costs its full size. None when taken; else nothing is consumed and the
        answer is the seconds until min(amount, burst) tokens are there."""
        rate, burst = self._limits(rate, burst)
        now = self._clock()
        tokens = self._tokens(key, now, rate, burst)
        if tokens < min(amount, 1.0) or (amount <= burst and tokens < amount):
            self._store(key, tokens, now)
            return (min(amount, burst) - tokens) * self.per / rate
        self._store(key, tokens - amount, now)
        return None

    def take_upto(self, key: Hashable, amount: int, *, rate: float | None = None,
                  burst: float | None = None) -> int:
        """Take as many whole tokens of `amount` as are there; how many were taken."""
        rate, burst = self._limits(rate, burst)
        now = self._clock()
        tokens = self._tokens(key, now, rate, burst)
        taken = min(amount, max(0, math.floor(tokens)))
        self._store(key, tokens - taken, now)
        return taken


@dataclass
class _Failures:
    times: deque[float]
    blocked_until: float = field(default=-math.inf)


class FailureLimiter:
    """Blocks a key for `block` seconds after `max_failures` failures within `window`.

    Meant for failed AUTH per client IP (what Postfix's anvil and fail2ban do together):
    the server checks `blocked` before it verifies a password, so a blocked client costs
    no scrypt work. Failures reported while a key is blocked do not extend the block, so
    the time a client must wait is what the reply said.
    """

    def __init__(self, *, max_failures: int = 5, window: float = 300.0, block: float = 300.0,
                 max_keys: int = 10_000, clock: Clock = time.monotonic) -> None:
        if max_failures < 1:
            raise ValueError(f"max_failures must be at least 1, not {max_failures}")
        if not window > 0 or not block > 0:
            raise ValueError("window and block must be positive durations")
        _check_max_keys(max_keys)
        self.max_failures = max_failures
        self.window = window
        self.block = block
        self.max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[str, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def retune(self, *, max_failures: int, block: float) -> None:
        """New limits from a reload; failures counted and blocks running stay."""
        fresh = FailureLimiter(max_failures=max_failures, window=self.window, block=block,
                               max_keys=self.max_keys)                       # validates
        self.max_failures, self.block = fresh.max_failures, fresh.block

    def blocked(self, key: str) -> bool:
        return self.retry_after(key) > 0

    def retry_after(self, key: str) -> float:
        """Seconds left in the key's block, 0.0 when it is not blocked."""
        state = self._keys.get(key)
        if state is None:
            return 0.0
        return max(0.0, state.blocked_until - self._clock())

    def failure(self, key: str) -> bool:
        """Count a failure; True when it is the one that starts a block."""
        now = self._clock()
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Failures(deque(maxlen=self.max_failures))
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        self._keys.move_to_end(key)
        if state.blocked_until > now:
            return False
        times = state.times
        while times and times[0] <= now - self.window:
            times.popleft()
        times.append(now)
        if len(times) >= self.max_failures:
            state.blocked_until = now + self.block
            times.clear()
            return True
        return False

    def success(self, key: str) -> None:
        """A good login forgets earlier failures (typos should not add up over a day)."""
        self._keys.pop(key, None)
