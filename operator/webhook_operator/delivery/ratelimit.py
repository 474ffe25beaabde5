"""``spec.rateLimit``: one token bucket per webhook (pure; the clock is passed in).

An attempt waits for a token holding no slot, keeping the webhook's turn so that the next one waits
behind it, and takes the token at the moment it is sent, once it holds its slots. So the receiver
sees at most ``burst`` requests at once and ``requestsPerSecond`` sustained: in any window of ``t``
seconds, at most ``burst + rate * t``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

EPSILON = 1e-9  # float sums of elapsed x rate fall a hair short of whole tokens


@dataclass(frozen=True)
class RateLimit:
    requests_per_second: float
    burst: int


def default_burst(requests_per_second: float) -> int:
    """The burst when spec.rateLimit.burst is not set: one second's worth, at least 1."""
    return max(1, math.ceil(requests_per_second))


class TokenBucket:
    """Starts full (``burst`` tokens); refills at ``rate`` per second up to ``burst``."""

    def __init__(self, limit: RateLimit, clock: float) -> None:
        self.limit = limit
        self.tokens = float(limit.burst)
        self._last = clock

    def _refill(self, clock: float) -> None:
        elapsed = max(0.0, clock - self._last)
        self._last = max(self._last, clock)
        self.tokens = min(float(self.limit.burst), self.tokens + elapsed * self.limit.requests_per_second)

    def delay(self, clock: float) -> float:
        """Seconds until a token is available (0: one is); takes nothing."""
        self._refill(clock)
        if self.tokens >= 1.0 - EPSILON:
            return 0.0
        return (1.0 - self.tokens) / self.limit.requests_per_second

    def try_take(self, clock: float) -> bool:
        """Take a token if one is available now."""
        self._refill(clock)
        if self.tokens >= 1.0 - EPSILON:
            self.tokens = max(0.0, self.tokens - 1.0)
            return True
        return False

    def take(self, clock: float) -> None:
        """Take a token the caller waited for (``delay`` was 0); should the limit have changed since,
        the bucket goes into debt and the next waiters wait it off, so the bound still holds."""
        self._refill(clock)
        self.tokens -= 1.0

    def reconfigure(self, limit: RateLimit, clock: float) -> None:
        """A spec change: tokens earned so far are kept (at most the new burst), then refill at the new rate.

        Lowering the limit therefore takes effect at once; raising it does not grant a fresh burst.
        """
        if limit == self.limit:
            return
        self._refill(clock)
        self.limit = limit
        self.tokens = min(self.tokens, float(limit.burst))


# A waiter for a token looks at the webhook's spec again this often: a changed limit applies to it.
RATE_RECHECK_S = 1.0
Held = tuple[TokenBucket, asyncio.Lock]  # a webhook's bucket, and its turn (waiters queue oldest first)


class RateBuckets:
    """One bucket and turn per webhook key (namespace, name, uid: a recreated webhook starts full)."""

    def __init__(self) -> None:
        self._held: dict[Hashable, Held] = {}

    def get(self, key: Hashable, limit: RateLimit | None) -> Held | None:
        """The bucket for ``limit`` (kept across spec changes, see ``reconfigure``); None without a limit."""
        if limit is None:
            self.drop(key)
            return None
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = (TokenBucket(limit, time.monotonic()), asyncio.Lock())
        else:
            held[0].reconfigure(limit, time.monotonic())
        return held

    def drop(self, key: Hashable) -> bool:
        """Forget a webhook's bucket; whether it had one."""
        return self._held.pop(key, None) is not None


async def until_token(bucket: TokenBucket, current: Callable[[], Held | None], stopping: asyncio.Event) -> None:
    """Wait (holding the turn, no slot) until ``bucket`` has a token, the webhook's bucket is no longer
    this one (``current``: its limit removed or replaced), or ``stopping`` is set."""
    while not stopping.is_set():
        now_held = current()
        if now_held is None or now_held[0] is not bucket:
            return
        delay = bucket.delay(time.monotonic())
        if delay <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), min(delay, RATE_RECHECK_S))
