"""spec.rateLimit's token bucket, on a fake clock."""

from __future__ import annotations

import pytest

from webhook_operator.delivery.ratelimit import RateLimit, TokenBucket, default_burst
from webhook_operator.model import parse_webhook_spec


def take_all(bucket: TokenBucket, clock: float) -> int:
    taken = 0
    while bucket.try_take(clock):
        taken += 1
    return taken


def test_starts_full_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(RateLimit(10.0, 20), clock=0.0)
    assert take_all(bucket, 0.0) == 20
    assert bucket.delay(0.0) == pytest.approx(0.1)
    assert take_all(bucket, 0.05) == 0
    assert bucket.delay(0.05) == pytest.approx(0.05)
    assert take_all(bucket, 1.0) == 10
    assert take_all(bucket, 100.0) == 20  # never more than burst after a quiet period


def test_any_window_holds_at_most_burst_plus_rate_times_its_length() -> None:
    # Greedy sender: tries every millisecond for 10 s.
    bucket = TokenBucket(RateLimit(5.0, 3), clock=0.0)
    sent: list[float] = []
    for ms in range(10_000):
        t = ms / 1000
        while bucket.try_take(t):
            sent.append(t)
    assert len(sent) == pytest.approx(3 + 5 * 10, abs=1)
    for i, start in enumerate(sent):
        for window in (0.0, 0.5, 1.0, 3.0):
            inside = sum(1 for t in sent[i:] if t <= start + window)
            assert inside <= 3 + 5 * window + 1e-9


def test_fractional_rate() -> None:
    bucket = TokenBucket(RateLimit(0.5, 1), clock=0.0)
    assert bucket.try_take(0.0)
    assert bucket.delay(0.0) == pytest.approx(2.0)
    assert not bucket.try_take(1.9)
    assert bucket.try_take(2.0)


def test_reconfigure_keeps_tokens_up_to_the_new_burst_and_no_fresh_burst() -> None:
    bucket = TokenBucket(RateLimit(10.0, 20), clock=0.0)
    assert take_all(bucket, 0.0) == 20
    bucket.reconfigure(RateLimit(100.0, 50), clock=0.0)  # raised: no new burst granted
    assert take_all(bucket, 0.0) == 0
    assert take_all(bucket, 0.1) == 10  # refills at the new rate
    bucket = TokenBucket(RateLimit(10.0, 20), clock=0.0)
    bucket.reconfigure(RateLimit(1.0, 2), clock=0.0)  # lowered: takes effect at once
    assert take_all(bucket, 0.0) == 2
    assert bucket.delay(0.0) == pytest.approx(1.0)


def test_clock_going_backwards_grants_nothing() -> None:
    bucket = TokenBucket(RateLimit(10.0, 1), clock=5.0)
    assert bucket.try_take(5.0)
    assert not bucket.try_take(4.0)
    assert not bucket.try_take(5.05)
    assert bucket.try_take(5.1)


def test_spec_parsing() -> None:
    base = {"url": "https://x.example", "events": ["a"]}
    assert parse_webhook_spec(base).rate_limit is None
    assert parse_webhook_spec({**base, "rateLimit": {"requestsPerSecond": 10, "burst": 20}}).rate_limit == RateLimit(
        10.0, 20
    )
    assert parse_webhook_spec({**base, "rateLimit": {"requestsPerSecond": 2.5}}).rate_limit == RateLimit(2.5, 3)
    assert parse_webhook_spec({**base, "rateLimit": {"requestsPerSecond": 0}}).rate_limit is None
    assert default_burst(0.2) == 1
    assert not parse_webhook_spec(base).ordered
    assert parse_webhook_spec({**base, "ordering": "Ordered"}).ordered


def test_take_after_a_lowered_limit_leaves_a_debt_that_later_waiters_wait_off() -> None:
    bucket = TokenBucket(RateLimit(1.0, 1), clock=0.0)
    assert bucket.delay(0.0) == 0.0  # a waiter's turn: a token is there
    bucket.take(0.0)
    bucket.take(0.0)  # taken again (the limit changed under it): a debt, not a second free request
    assert bucket.delay(0.0) == pytest.approx(2.0)
    assert not bucket.try_take(1.5)
    assert bucket.try_take(2.0)
