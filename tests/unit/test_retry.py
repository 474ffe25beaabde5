"""Success and retry decisions, Retry-After parsing and the backoff schedule."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from webhook_operator.retry import (
    RetryPolicy,
    is_retryable_status,
    is_success,
    next_backoff,
    parse_retry_after,
    should_retry,
    status_class,
)

NOW = datetime(2026, 11, 28, 3, 0, 0, tzinfo=UTC)


def test_defaults_are_the_schema_defaults() -> None:
    assert RetryPolicy() == RetryPolicy(max_retries=3, backoff_seconds=1, max_backoff_seconds=60, timeout_seconds=10)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(199, False), (200, True), (201, True), (204, True), (299, True), (300, False), (404, False), (500, False)],
)
def test_any_2xx_is_success(status: int, expected: bool) -> None:
    assert is_success(status) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (599, True),
        (408, True),
        (429, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (410, False),
        (422, False),
        (301, False),
        (302, False),
        (307, False),
        (308, False),
        (200, False),
    ],
)
def test_retryable_statuses(status: int, expected: bool) -> None:
    assert is_retryable_status(status) is expected


@pytest.mark.parametrize(
    ("status", "failure", "label"),
    [
        (200, None, "2xx"),
        (204, None, "2xx"),
        (301, None, "3xx"),
        (404, None, "4xx"),
        (429, None, "4xx"),
        (500, None, "5xx"),
        (503, None, "5xx"),
        (None, "timeout", "timeout"),
        (None, "error", "error"),
        (None, "blocked", "blocked"),
        (None, None, "error"),
        (101, None, "error"),
    ],
)
def test_status_class_labels(status: int | None, failure: str | None, label: str) -> None:
    assert status_class(status, failure) == label


# --- Retry-After -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("Sat, 28 Nov 2026 03:00:30 GMT", 30.0),
        ("Saturday, 28-Nov-26 03:01:00 GMT", 60.0),
        ("Sat Nov 28 03:00:10 2026", 10.0),
        ("Sat, 28 Nov 2026 02:59:00 GMT", 0.0),
        ("Sat, 28 Nov 2026 04:00:00 +0100", 0.0),
    ],
)
def test_retry_after_values(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [None, "", "  ", "soon", "nan", "inf", "12abc", "Sat, 99 Foo 2026"])
def test_unreadable_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


def test_retry_after_date_against_a_naive_now_is_read_as_utc() -> None:
    assert parse_retry_after("Sat, 28 Nov 2026 03:00:30 GMT", NOW.replace(tzinfo=None)) == pytest.approx(30.0)


# --- backoff -----------------------------------------------------------------------------


class Fixed(random.Random):
    """A Random whose uniform() returns one end of the range, to pin the jitter."""

    def __init__(self, end: str) -> None:
        super().__init__(0)
        self.end = end

    def uniform(self, a: float, b: float) -> float:
        return a if self.end == "low" else b


@pytest.mark.parametrize(
    ("attempts", "step"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 32.0), (7, 60.0), (8, 60.0), (1000, 60.0)],
)
def test_backoff_doubles_from_the_base_and_is_capped(attempts: int, step: float) -> None:
    policy = RetryPolicy()
    assert next_backoff(attempts, policy, rng=Fixed("high")) == pytest.approx(step)
    assert next_backoff(attempts, policy, rng=Fixed("low")) == pytest.approx(step / 2)


def test_jitter_stays_within_half_to_full_step() -> None:
    policy = RetryPolicy(backoff_seconds=2, max_backoff_seconds=100)
    rng = random.Random(42)
    delays = [next_backoff(3, policy, rng=rng) for _ in range(500)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    # Jitter really spreads the delays rather than returning one value.
    assert max(delays) - min(delays) > 3.0


def test_backoff_without_an_rng_uses_the_module_random() -> None:
    delays = {next_backoff(2, RetryPolicy()) for _ in range(50)}
    assert all(1.0 <= d <= 2.0 for d in delays)
    assert len(delays) > 1


def test_cap_below_base_wins() -> None:
    policy = RetryPolicy(backoff_seconds=10, max_backoff_seconds=3)
    assert next_backoff(1, policy, rng=Fixed("high")) == pytest.approx(3.0)


def test_zero_backoff_retries_immediately() -> None:
    policy = RetryPolicy(backoff_seconds=0)
    assert next_backoff(5, policy, rng=Fixed("high")) == 0.0


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(30.0, 30.0), (0.0, 0.5), (0.2, 0.5), (600.0, 60.0), (60.0, 60.0)],
)
def test_retry_after_lengthens_the_wait_up_to_the_cap(retry_after: float, expected: float) -> None:
    policy = RetryPolicy()
    assert next_backoff(1, policy, retry_after=retry_after, rng=Fixed("low")) == pytest.approx(expected)


def test_retry_after_never_shortens_the_backoff() -> None:
    policy = RetryPolicy()
    assert next_backoff(5, policy, retry_after=1.0, rng=Fixed("high")) == pytest.approx(16.0)


# --- should_retry ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "failure", "expected"),
    [
        (503, None, True),
        (500, None, True),
        (408, None, True),
        (429, None, True),
        (None, "timeout", True),
        (None, "error", True),
        (None, "blocked", False),
        (404, None, False),
        (400, None, False),
        (301, None, False),
        (302, None, False),
        (200, None, False),
    ],
)
def test_which_outcomes_are_retried(status: int | None, failure: str | None, expected: bool) -> None:
    assert should_retry(1, RetryPolicy(), status=status, failure=failure) is expected


def test_a_delivery_gets_one_plus_max_retries_attempts() -> None:
    policy = RetryPolicy(max_retries=3)
    decisions = [should_retry(n, policy, status=503, failure=None) for n in range(1, 6)]
    assert decisions == [True, True, True, False, False]


def test_max_retries_zero_means_a_single_attempt() -> None:
    assert not should_retry(1, RetryPolicy(max_retries=0), status=503, failure=None)
    assert not should_retry(1, RetryPolicy(max_retries=0), status=None, failure="timeout")


def test_three_503s_then_a_fourth_attempt_with_default_policy() -> None:
    # The contract's promise: a >= 500 status is retried up to three times.
    policy = RetryPolicy()
    attempts = 1
    while should_retry(attempts, policy, status=503, failure=None):
        attempts += 1
    assert attempts == 4


def test_total_wait_of_the_default_schedule_is_bounded() -> None:
    policy = RetryPolicy()
    total = sum(next_backoff(n, policy, rng=Fixed("high")) for n in range(1, 1 + policy.max_retries))
    assert total == pytest.approx(1 + 2 + 4)
    assert timedelta(seconds=total) < timedelta(minutes=1)
