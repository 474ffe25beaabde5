"""``spec.rateLimit``: one token bucket per webhook (pure; the clock is passed in).

An attempt waits for a token holding no slot, keeping the webhook's turn so that the next one waits
behind it, and takes the token at the moment it is sent, once it holds its slots. So the receiver
sees at most ``burst`` requests at once and ``requestsPerSecond`` sustained: in any window of ``t``
seconds, at most ``burst + rate * t``.
"""

from __future__ import annotations

import math
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
