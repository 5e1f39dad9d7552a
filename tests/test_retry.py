"""The retry schedule: Postfix-like backoff, jitter bounds, expiry and delay warnings."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.mail.delivery.retry import (
    RetryPolicy,
    backoff,
    expired,
    next_attempt,
    retry_until,
    warning_due,
)

T0 = 1_700_000_000.0
MIN = 60.0
DAY = 86400.0
EXACT = RetryPolicy(jitter=0.0)


@pytest.mark.parametrize(("attempts", "delay"), [
    (1, 5 * MIN), (2, 10 * MIN), (3, 20 * MIN), (4, 40 * MIN),
    (5, 70 * MIN), (6, 70 * MIN), (7, 70 * MIN), (50, 70 * MIN), (10_000, 70 * MIN),
])
def test_default_schedule_without_jitter(attempts, delay):
    assert backoff(RetryPolicy(), attempts) == delay
    now = T0 + 3600
    assert next_attempt(EXACT, attempts, received_at=T0, now=now,
                        rng=random.Random(1)) == now + delay


@pytest.mark.parametrize(("attempts", "delay"), [
    (1, 5 * MIN), (2, 10 * MIN), (3, 20 * MIN), (4, 40 * MIN), (5, 70 * MIN), (6, 70 * MIN),
])
def test_default_schedule_within_jitter(attempts, delay):
    rng = random.Random(7)
    for _ in range(200):
        when = next_attempt(RetryPolicy(), attempts, received_at=T0, now=T0, rng=rng)
        assert when is not None
        assert 0.9 * delay <= when - T0 <= 1.1 * delay


def test_jitter_spreads_retries():
    rng = random.Random(3)
    times = {next_attempt(RetryPolicy(), 5, received_at=T0, now=T0, rng=rng)
             for _ in range(100)}
    assert len(times) > 90


@given(attempts=st.integers(1, 10_000), seed=st.integers(0, 2**32),
       jitter=st.floats(0.0, 0.99), elapsed=st.floats(0.0, 4 * DAY),
       first=st.floats(1.0, 3600.0), factor=st.floats(1.0, 100.0))
def test_jitter_bounds(*, attempts, seed, jitter, elapsed, first, factor):
    policy = RetryPolicy(first_retry=first, max_backoff=first * factor, jitter=jitter)
    now = T0 + elapsed
    when = next_attempt(policy, attempts, received_at=T0, now=now, rng=random.Random(seed))
    base = min(first * 2.0 ** min(attempts - 1, 64), first * factor)
    if when is None:
        assert now + base * (1 + jitter) > T0 + policy.lifetime - 1e-6
    else:
        delay = when - now
        assert base * (1 - jitter) - 1e-6 <= delay <= base * (1 + jitter) + 1e-6
        assert when <= retry_until(policy, received_at=T0)


def test_same_seed_same_schedule():
    def schedule(seed):
        rng = random.Random(seed)
        return [next_attempt(RetryPolicy(), n, received_at=T0, now=T0, rng=rng)
                for n in range(1, 10)]
    assert schedule(42) == schedule(42)
    assert schedule(42) != schedule(43)


def test_gives_up_when_the_next_attempt_would_be_after_the_lifetime():
    deadline = T0 + 5 * DAY
    rng = random.Random(0)
    # 70 minutes before the deadline: a retry 70 minutes later lands exactly on it.
    assert next_attempt(EXACT, 9, received_at=T0, now=deadline - 70 * MIN,
                        rng=rng) == deadline
    assert next_attempt(EXACT, 9, received_at=T0, now=deadline - 70 * MIN + 1,
                        rng=rng) is None
    assert next_attempt(EXACT, 9, received_at=T0, now=deadline + 1, rng=rng) is None


def test_whole_lifetime_simulation():
    """Retry until told to stop: about 106 attempts over 5 days with Postfix's defaults."""
    policy = RetryPolicy()
    rng = random.Random(11)
    now, attempts, times = T0, 1, []
    while (when := next_attempt(policy, attempts, received_at=T0, now=now, rng=rng)):
        assert when > now
        times.append(when)
        now, attempts = when, attempts + 1
    assert 95 <= len(times) <= 120
    deadline = T0 + 5 * DAY
    assert times[-1] <= deadline
    assert deadline - times[-1] < 70 * MIN * 1.1       # no long idle stretch at the end
    assert not expired(policy, received_at=T0, now=times[-1]) or times[-1] == deadline


@pytest.mark.parametrize(("elapsed", "is_expired"), [
    (0.0, False), (DAY, False), (5 * DAY - 1, False), (5 * DAY, True), (6 * DAY, True),
])
def test_expired(elapsed, is_expired):
    assert expired(RetryPolicy(), received_at=T0, now=T0 + elapsed) is is_expired


def test_lifetime_is_configurable():
    short = RetryPolicy(first_retry=1.0, max_backoff=2.0, lifetime=10.0)
    assert expired(short, received_at=T0, now=T0 + 10)
    assert retry_until(short, received_at=T0) == T0 + 10
    assert next_attempt(short, 1, received_at=T0, now=T0 + 9.5, rng=random.Random(0)) is None


@pytest.mark.parametrize(("delay_warning", "elapsed", "warned", "due"), [
    (None, 3 * DAY, False, False),              # off by default
    (4 * 3600.0, 3 * 3600.0, False, False),      # not yet
    (4 * 3600.0, 4 * 3600.0, False, True),
    (4 * 3600.0, 2 * DAY, False, True),
    (4 * 3600.0, 2 * DAY, True, False),          # once only
    (4 * 3600.0, 5 * DAY, False, False),         # expired: the failure DSN goes instead
])
def test_warning_due(delay_warning, elapsed, warned, due):
    policy = RetryPolicy(delay_warning=delay_warning)
    assert warning_due(policy, received_at=T0, now=T0 + elapsed, warned=warned) is due


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"first_retry": 0.0}, "first_retry must be positive"),
    ({"first_retry": float("nan")}, "first_retry must be a finite number"),
    ({"max_backoff": 100.0}, "max_backoff (100.0) must be at least first_retry"),
    ({"lifetime": -1.0}, "lifetime must be positive"),
    ({"lifetime": float("inf")}, "lifetime must be a finite number"),
    ({"jitter": 1.0}, "jitter must be at least 0 and below 1"),
    ({"jitter": -0.1}, "jitter must be at least 0 and below 1"),
    ({"delay_warning": 0.0}, "delay_warning must be positive"),
])
def test_bad_policies(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize("attempts", [0, -1])
def test_attempts_count_failures(attempts):
    with pytest.raises(ValueError, match="at least 1"):
        next_attempt(RetryPolicy(), attempts, received_at=T0, now=T0, rng=random.Random(0))
