"""Per-key rate limits for SMTP intake: token buckets and an AUTH-failure blocker.

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
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]


def _check_max_keys(max_keys: int) -> None:
    if max_keys < 1:
        raise ValueError(f"max_keys must be at least 1, not {max_keys}")


class TokenBucket:
    """`rate` tokens per second refill each key's bucket up to `burst`.

    A key not in the table has a full bucket, so a new client may send `burst` at once.
    """

    def __init__(self, *, rate: float, burst: float, max_keys: int = 10_000,
                 clock: Clock = time.monotonic) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be a positive number of tokens per second, not {rate}")
        if not burst > 0 or not math.isfinite(burst):
            raise ValueError(f"burst must be positive, not {burst}")
        _check_max_keys(max_keys)
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def __len__(self) -> int:
        return len(self._buckets)

    def retune(self, *, rate: float, burst: float) -> None:
        """New limits from a reload; every key keeps what it has used (up to the new
        burst), so a SIGHUP is no way around a limit."""
        fresh = TokenBucket(rate=rate, burst=burst, max_keys=self.max_keys)   # validates
        self.rate, self.burst = fresh.rate, fresh.burst

    def _tokens(self, key: str, now: float) -> float:
        state = self._buckets.get(key)
        if state is None:
            return self.burst
        tokens, at = state
        # max(): an injected clock that steps back must not drain the bucket.
        return min(self.burst, tokens + max(0.0, now - at) * self.rate)

    def _check_amount(self, amount: float) -> None:
        if amount < 0 or amount > self.burst:
            raise ValueError(f"amount {amount} can never be taken from a bucket of {self.burst}")

    def take(self, key: str, amount: float = 1.0) -> bool:
        """Consume `amount` tokens if they are there; a refusal consumes nothing."""
        self._check_amount(amount)
        now = self._clock()
        tokens = self._tokens(key, now)
        allowed = tokens >= amount
        if allowed:
            tokens -= amount
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, key: str, amount: float = 1.0) -> float:
        """Seconds until `take(key, amount)` would succeed (0.0 if it would now).

        For the text of a 451 reply; it does not count as a use of the key.
        """
        self._check_amount(amount)
        missing = amount - self._tokens(key, self._clock())
        return max(0.0, missing / self.rate)


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
