"""Transient API errors: which ones, how long to wait before the next try, and one wrapper that retries.

Every read and write the operator makes to the API server goes through ``with_retries`` or, for
work that is rescheduled rather than awaited (a Webhook's reconcile), through ``backoff_delay``.
A transient error is never final: 5xx, 408, 429 (``Retry-After`` honoured), 409 ``Conflict``,
timeouts and connection errors are tried again; other statuses (400, 403, 404, 409
``AlreadyExists``, 422 ...) will not change by waiting and are raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from webhook_operator.kube import ApiError

log = logging.getLogger(__name__)
T = TypeVar("T")

BASE_S = 0.5  # the first wait
CAP_S = 30.0  # the longest wait, Retry-After included
TRANSIENT_STATUSES = frozenset({408, 429})


def is_transient(exc: BaseException) -> bool:
    """True for an error that another try may not meet: by status for ApiError, always for I/O errors."""
    if isinstance(exc, ApiError):
        if exc.status == 409:
            return exc.reason != "AlreadyExists"  # a resourceVersion or uid conflict; re-read and try again
        return exc.status >= 500 or exc.status in TRANSIENT_STATUSES
    return isinstance(exc, (OSError, TimeoutError))


def backoff_delay(
    failures: int,
    *,
    retry_after: float | None = None,
    base: float = BASE_S,
    cap: float = CAP_S,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after ``failures`` (>= 1) failed tries in a row.

    The step doubles from ``base`` up to ``cap``; the wait is drawn from [0.5, 1.0] of the step so
    that many callers failing together spread out. A ``Retry-After`` lengthens it, up to ``cap``.
    """
    step = min(base * 2.0 ** min(max(failures, 1) - 1, 32), cap)
    delay = step * (rng or random).uniform(0.5, 1.0)
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, cap)
    return max(0.0, delay)


def retry_after_of(exc: BaseException) -> float | None:
    return exc.retry_after if isinstance(exc, ApiError) else None


async def with_retries(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    attempts: int | None = None,
    give_up: Callable[[], bool] | None = None,
    base: float = BASE_S,
    cap: float = CAP_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """``await op()`` until it returns or raises a non-transient error.

    With ``attempts`` the last transient error is raised after that many tries; ``give_up`` is
    asked before each wait (e.g. "the object is gone") and raises the last error when it says so.
    Without either, a transient error is retried for as long as it lasts.
    """
    failures = 0
    while True:
        try:
            return await op()
        except Exception as exc:
            if not is_transient(exc):
                raise
            failures += 1
            if (attempts is not None and failures >= attempts) or (give_up is not None and give_up()):
                raise
            delay = backoff_delay(failures, retry_after=retry_after_of(exc), base=base, cap=cap)
            log.warning("%s failed (%s); try %d, next in %.1fs", what, exc, failures + 1, delay)
            await sleep(delay)
