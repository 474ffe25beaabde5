"""When a delivery attempt counts as success, whether to try again, and how long to wait first."""

from __future__ import annotations

import email.utils
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime

FAILURE_TIMEOUT = "timeout"
FAILURE_ERROR = "error"
FAILURE_BLOCKED = "blocked"

# Jitter draws from this fraction of each step ("equal jitter"): spreads retries of many
# deliveries that failed together while keeping the schedule's growth recognisable.
JITTER_LOW = 0.5
JITTER_HIGH = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    """`spec.retry` of a Webhook; the defaults are the CRD schema's."""

    max_retries: int = 3
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    timeout_seconds: float = 10.0


def is_success(status: int) -> bool:
    """Any 2xx is a success."""
    return 200 <= status <= 299


def is_retryable_status(status: int) -> bool:
    """Server errors, 408 and 429 are worth another try; 3xx and other 4xx will not change."""
    return status >= 500 or status in (408, 429)


def status_class(status: int | None, failure: str | None) -> str:
    """The `code` label of `delivery_attempts_total`: 2xx|3xx|4xx|5xx|timeout|error|blocked."""
    if failure in (FAILURE_TIMEOUT, FAILURE_ERROR, FAILURE_BLOCKED):
        return failure
    if status is None or status < 200:
        return FAILURE_ERROR
    if status >= 500:
        return "5xx"
    return f"{status // 100}xx"


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date); None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def next_backoff(
    attempts_made: int,
    policy: RetryPolicy,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before the next attempt, after `attempts_made` attempts (>= 1) have failed.

    The step doubles from `backoff_seconds` (after the first attempt it is `backoff_seconds`), is capped
    at `max_backoff_seconds`, and the wait is drawn uniformly from [0.5, 1.0] of the step. A
    `Retry-After` lengthens the wait to at least that many seconds, but never beyond the cap.
    """
    cap = max(0.0, policy.max_backoff_seconds)
    # The exponent is bounded so the float cannot overflow for absurd attempt counts.
    exponent = min(max(attempts_made, 1) - 1, 64)
    step = min(max(0.0, policy.backoff_seconds) * 2.0**exponent, cap)
    delay = step * (rng or random).uniform(JITTER_LOW, JITTER_HIGH)
    if retry_after is not None and math.isfinite(retry_after):
        delay = max(delay, retry_after)
    return min(max(0.0, delay), cap)


def should_retry(attempts_made: int, policy: RetryPolicy, *, status: int | None, failure: str | None) -> bool:
    """Whether to make another attempt; a delivery gets 1 + max_retries attempts in all."""
    if attempts_made >= 1 + policy.max_retries:
        return False
    if failure == FAILURE_BLOCKED:
        return False
    if failure in (FAILURE_TIMEOUT, FAILURE_ERROR):
        return True
    if status is None:
        return True
    return is_retryable_status(status)
