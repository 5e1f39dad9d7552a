"""Token buckets and the AUTH-failure blocker, driven by a hand-moved clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.ratelimit import FailureLimiter, TokenBucket


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal():
    bucket = TokenBucket(rate=1.0, burst=3, clock=Clock())
    assert [bucket.take("a") for _ in range(4)] == [True, True, True, False]


def test_refill_at_rate_up_to_burst():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=4, clock=clock)
    for _ in range(4):
        assert bucket.take("a")
    assert not bucket.take("a")
    clock.now += 0.5                     # one token back
    assert bucket.take("a")
    assert not bucket.take("a")
    clock.now += 3600                    # refills to burst, not beyond
    assert sum(bucket.take("a") for _ in range(10)) == 4


def test_refusal_consumes_nothing():
    clock = Clock()
    bucket = TokenBucket(rate=1.0, burst=2, clock=clock)
    bucket.take("a", 2)
    for _ in range(100):
        assert not bucket.take("a")
    clock.now += 1.0
    assert bucket.take("a")


def test_keys_are_independent():
    bucket = TokenBucket(rate=1.0, burst=1, clock=Clock())
    assert bucket.take("10.0.0.1")
    assert not bucket.take("10.0.0.1")
    assert bucket.take("10.0.0.2")


def test_retry_after():
    clock = Clock()
    bucket = TokenBucket(rate=0.5, burst=2, clock=clock)
    assert bucket.retry_after("a") == 0.0
    bucket.take("a", 2)
    assert bucket.retry_after("a") == pytest.approx(2.0)
    assert bucket.retry_after("a", 2) == pytest.approx(4.0)
    clock.now += 1.5
    assert bucket.retry_after("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.retry_after("a") == 0.0
    assert bucket.take("a")


def test_retry_after_does_not_create_keys():
    bucket = TokenBucket(rate=1, burst=1, clock=Clock())
    bucket.retry_after("ghost")
    assert len(bucket) == 0


def test_least_recently_used_key_is_evicted():
    bucket = TokenBucket(rate=0.001, burst=1, max_keys=2, clock=Clock())
    assert bucket.take("a")
    assert bucket.take("b")
    assert not bucket.take("a")          # a is now the most recently used
    assert bucket.take("c")              # evicts b
    assert len(bucket) == 2
    assert not bucket.take("a")          # a kept its empty bucket
    assert bucket.take("b")              # b was forgotten: full again


def test_table_stays_bounded_under_a_flood_of_keys():
    bucket = TokenBucket(rate=1, burst=1, max_keys=100, clock=Clock())
    for i in range(10_000):
        bucket.take(f"198.51.100.{i}")
    assert len(bucket) == 100


def test_clock_stepping_back_does_not_drain_or_fill():
    clock = Clock()
    bucket = TokenBucket(rate=1, burst=1, clock=clock)
    assert bucket.take("a")
    clock.now -= 100
    assert not bucket.take("a")
    clock.now += 101
    assert bucket.take("a")


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"rate": 0, "burst": 1}, "rate"),
    ({"rate": -1, "burst": 1}, "rate"),
    ({"rate": math.nan, "burst": 1}, "rate"),
    ({"rate": 1, "burst": 0}, "burst"),
    ({"rate": 1, "burst": math.inf}, "burst"),
    ({"rate": 1, "burst": 1, "max_keys": 0}, "max_keys"),
])
def test_bad_bucket_parameters(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        TokenBucket(**kwargs)


def test_amount_beyond_burst_is_a_programming_error():
    bucket = TokenBucket(rate=1, burst=5, clock=Clock())
    with pytest.raises(ValueError, match="never"):
        bucket.take("a", 6)
    with pytest.raises(ValueError, match="never"):
        bucket.retry_after("a", -1)


@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0.1, 3)), max_size=60),
       st.floats(0.1, 10), st.floats(1, 20))
def test_never_grants_more_than_burst_plus_refill(steps, rate, burst):
    clock = Clock(0.0)
    bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
    granted = 0.0
    for delay, wanted in steps:
        clock.now += delay
        amount = min(wanted, burst)
        wait = bucket.retry_after("k", amount)
        ok = bucket.take("k", amount)
        assert ok == (wait == 0.0)
        granted += amount if ok else 0.0
        assert granted <= burst + rate * clock.now + 1e-9


def test_failures_block_after_the_limit():
    clock = Clock()
    limiter = FailureLimiter(max_failures=3, window=60, block=300, clock=clock)
    for _ in range(2):
        assert limiter.failure("ip") is False
        assert not limiter.blocked("ip")
    assert limiter.failure("ip") is True          # the one that starts the block
    assert limiter.blocked("ip")
    assert limiter.retry_after("ip") == pytest.approx(300)
    assert limiter.failure("ip") is False         # already blocked: no second start
    assert not limiter.blocked("other")


def test_failures_outside_the_window_do_not_add_up():
    clock = Clock()
    limiter = FailureLimiter(max_failures=3, window=60, block=300, clock=clock)
    for _ in range(10):
        limiter.failure("ip")
        clock.now += 30                  # at most two failures in any 60 s
        limiter.failure("ip")
        clock.now += 31
        assert not limiter.blocked("ip")


def test_block_expires_and_starts_afresh():
    clock = Clock()
    limiter = FailureLimiter(max_failures=2, window=60, block=100, clock=clock)
    limiter.failure("ip")
    limiter.failure("ip")
    clock.now += 99.9
    assert limiter.blocked("ip")
    clock.now += 0.1
    assert not limiter.blocked("ip")
    limiter.failure("ip")
    assert not limiter.blocked("ip")     # the count restarted with the block
    limiter.failure("ip")
    assert limiter.blocked("ip")


def test_failures_while_blocked_do_not_extend_the_block():
    clock = Clock()
    limiter = FailureLimiter(max_failures=1, window=60, block=100, clock=clock)
    limiter.failure("ip")
    clock.now += 50
    for _ in range(10):
        limiter.failure("ip")
    assert limiter.retry_after("ip") == pytest.approx(50)


def test_success_resets():
    limiter = FailureLimiter(max_failures=3, clock=Clock())
    limiter.failure("ip")
    limiter.failure("ip")
    limiter.success("ip")
    limiter.failure("ip")
    limiter.failure("ip")
    assert not limiter.blocked("ip")
    assert len(limiter) == 1
    limiter.success("ip")
    limiter.success("never-seen")
    assert len(limiter) == 0


def test_failure_table_is_bounded():
    limiter = FailureLimiter(max_failures=2, max_keys=10, clock=Clock())
    for i in range(1000):
        limiter.failure(str(i))
    assert len(limiter) == 10


@pytest.mark.parametrize("kwargs", [
    {"max_failures": 0}, {"window": 0}, {"block": -1}, {"max_keys": 0},
])
def test_bad_limiter_parameters(kwargs):
    with pytest.raises(ValueError):
        FailureLimiter(**kwargs)
