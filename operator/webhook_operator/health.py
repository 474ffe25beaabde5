"""The 24-hour health window of one webhook: compact buckets, success rate, state and condition.

Counts live in 15-minute buckets (at most 97 in the window), persisted in
``status.health.buckets`` as ``"<unixStart>:<succeeded>:<failed>"`` so health survives a
restart and stays bounded however many deliveries there were.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from webhook_operator.model import format_time, parse_time

BUCKET_S = 900
WINDOW_S = 24 * 3600
HEALTHY_AT = 0.99
WARNING_AT = 0.90


@dataclass(frozen=True)
class HealthSummary:
    requests: int
    succeeded: int
    failed: int

    @property
    def ratio(self) -> float | None:
        return self.succeeded / self.requests if self.requests else None

    @property
    def success_rate(self) -> str:
        return format_rate(self.succeeded, self.requests)

    @property
    def state(self) -> str:
        return health_state(self.succeeded, self.requests)


def format_rate(succeeded: int, requests: int) -> str:
    """Two decimals, truncated so that 99.999% never shows as 100.00%; ``-`` with no requests."""
    if requests == 0:
        return "-"
    hundredths = math.floor(succeeded * 10000 / requests)
    return f"{hundredths // 100}.{hundredths % 100:02d}%"


def health_state(succeeded: int, requests: int) -> str:
    if requests == 0:
        return "Unknown"
    ratio = succeeded / requests
    if ratio >= HEALTHY_AT:
        return "Healthy"
    if ratio >= WARNING_AT:
        return "Warning"
    return "Critical"


def healthy_condition(summary: HealthSummary) -> tuple[str, str, str]:
    """(status, reason, message) of the ``Healthy`` condition."""
    if summary.requests == 0:
        return "Unknown", "NoRequests", "no deliveries in the last 24h"
    message = f"{summary.success_rate} of {summary.requests} requests in 24h"
    state = summary.state
    if state == "Healthy":
        return "True", "SuccessRateOK", message
    if state == "Warning":
        return "True", "SuccessRateDegraded", message
    return "False", "SuccessRateCritical", message


def _bucket_start(when: dt.datetime) -> int:
    ts = int(when.timestamp())
    return ts - ts % BUCKET_S


@dataclass
class HealthWindow:
    buckets: dict[int, list[int]] = field(default_factory=dict)  # start -> [succeeded, failed]
    last_delivery_time: dt.datetime | None = None
    last_status_code: int | None = None

    def record(self, when: dt.datetime, *, succeeded: bool, status_code: int | None) -> None:
        counts = self.buckets.setdefault(_bucket_start(when), [0, 0])
        counts[0 if succeeded else 1] += 1
        if self.last_delivery_time is None or when >= self.last_delivery_time:
            self.last_delivery_time = when
            if status_code is not None:
                self.last_status_code = status_code

    def prune(self, now: dt.datetime) -> None:
        oldest = _bucket_start(now) - WINDOW_S
        for start in [s for s in self.buckets if s < oldest]:
            del self.buckets[start]

    def summary(self, now: dt.datetime) -> HealthSummary:
        # The window is the current bucket plus the 96 before it: 24h at 15-minute resolution.
        newest = _bucket_start(now)
        oldest = newest - WINDOW_S + BUCKET_S
        # Buckets from the future (clock skew, a hand-edited status) are not counted.
        ok = sum(c[0] for s, c in self.buckets.items() if oldest <= s <= newest)
        bad = sum(c[1] for s, c in self.buckets.items() if oldest <= s <= newest)
        return HealthSummary(requests=ok + bad, succeeded=ok, failed=bad)

    def to_status(self, now: dt.datetime) -> dict[str, Any]:
        self.prune(now)
        summary = self.summary(now)
        status: dict[str, Any] = {
            "window": "24h",
            "requests": summary.requests,
            "succeeded": summary.succeeded,
            "failed": summary.failed,
            "successRate": summary.success_rate,
            "state": summary.state,
            "buckets": [f"{s}:{c[0]}:{c[1]}" for s, c in sorted(self.buckets.items())],
        }
        if self.last_delivery_time is not None:
            status["lastDeliveryTime"] = format_time(self.last_delivery_time)
        if self.last_status_code is not None:
            status["lastStatusCode"] = self.last_status_code
        return status

    @classmethod
    def from_status(cls, health: Any) -> HealthWindow:
        window = cls()
        if not isinstance(health, dict):
            return window
        items = health.get("buckets")
        for item in items if isinstance(items, list) else ():
            try:
                start, ok, bad = (int(part) for part in str(item).split(":"))
            except ValueError:
                continue  # a hand-edited entry is dropped rather than crashing the operator
            window.buckets[start] = [max(ok, 0), max(bad, 0)]
        window.last_delivery_time = parse_time(health.get("lastDeliveryTime"))
        code = health.get("lastStatusCode")
        window.last_status_code = code if isinstance(code, int) else None
        return window
