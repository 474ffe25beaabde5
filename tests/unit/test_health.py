"""The 24h health window: rate formatting, state thresholds, window edges, persistence in status."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from webhook_operator.health import (
    BUCKET_S,
    HealthSummary,
    HealthWindow,
    format_rate,
    health_state,
    healthy_condition,
)

# 03:00:00 UTC is a bucket boundary (a multiple of 15 minutes since the epoch).
NOW = dt.datetime(2026, 11, 28, 3, 0, 0, tzinfo=dt.UTC)
BUCKET_ITEM = re.compile(r"^[0-9]+:[0-9]+:[0-9]+$")  # the CRD's pattern for status.health.buckets


def window_with(*records: tuple[dt.timedelta, bool], now: dt.datetime = NOW) -> HealthWindow:
    """Deliveries at ``now - age``, succeeded or not."""
    window = HealthWindow()
    for age, ok in records:
        window.record(now - age, succeeded=ok, status_code=200 if ok else 503)
    return window


# -- format_rate ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("succeeded", "requests", "shown"),
    [
        (0, 0, "-"),
        (1, 1, "100.00%"),
        (0, 7, "0.00%"),
        (511, 512, "99.80%"),
        (99999, 100000, "99.99%"),
        (999999, 1000000, "99.99%"),
        (2, 3, "66.66%"),
        (1, 3, "33.33%"),
        (9, 10, "90.00%"),
        (1, 10000, "0.01%"),
        (1, 10001, "0.00%"),
    ],
)
def test_format_rate_shows_two_decimals_truncated_never_rounded_up(succeeded: int, requests: int, shown: str) -> None:
    assert format_rate(succeeded, requests) == shown


def test_only_a_perfect_record_shows_100_percent() -> None:
    assert all(format_rate(n - 1, n) != "100.00%" for n in range(1, 200001, 997))


# -- state thresholds -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("succeeded", "requests", "state"),
    [
        (0, 0, "Unknown"),
        (100, 100, "Healthy"),
        (99, 100, "Healthy"),  # exactly 99%
        (693, 700, "Healthy"),  # exactly 99% again, another float path
        (9899, 10000, "Warning"),  # 98.99%
        (90, 100, "Warning"),  # exactly 90%
        (900, 1000, "Warning"),
        (89999, 100000, "Critical"),  # 89.999%
        (0, 5, "Critical"),
    ],
)
def test_state_thresholds_are_inclusive_at_99_and_90_percent(succeeded: int, requests: int, state: str) -> None:
    assert health_state(succeeded, requests) == state
    assert HealthSummary(requests, succeeded, requests - succeeded).state == state


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        (HealthSummary(0, 0, 0), ("Unknown", "NoRequests", "no deliveries in the last 24h")),
        (HealthSummary(512, 511, 1), ("True", "SuccessRateOK", "99.80% of 512 requests in 24h")),
        (HealthSummary(10, 9, 1), ("True", "SuccessRateDegraded", "90.00% of 10 requests in 24h")),
        (HealthSummary(4, 3, 1), ("False", "SuccessRateCritical", "75.00% of 4 requests in 24h")),
    ],
)
def test_healthy_condition_is_true_for_healthy_and_warning_false_for_critical(
    summary: HealthSummary, expected: tuple[str, str, str]
) -> None:
    assert healthy_condition(summary) == expected


def test_summary_ratio_is_none_without_requests() -> None:
    assert HealthSummary(0, 0, 0).ratio is None
    assert HealthSummary(4, 3, 1).ratio == 0.75


# -- the window -------------------------------------------------------------------------
@pytest.mark.parametrize("into_bucket", [0, 1, BUCKET_S // 2, BUCKET_S - 1])
def test_a_delivery_24h_old_or_older_is_never_counted(into_bucket: int) -> None:
    now = NOW + dt.timedelta(seconds=into_bucket)
    window = window_with(
        (dt.timedelta(hours=24), True),
        (dt.timedelta(hours=24, seconds=1), True),
        (dt.timedelta(days=3), True),
        now=now,
    )
    assert window.summary(now).requests == 0


@pytest.mark.parametrize("into_bucket", [0, 1, BUCKET_S // 2, BUCKET_S - 1])
def test_a_delivery_younger_than_23h45m_is_always_counted(into_bucket: int) -> None:
    now = NOW + dt.timedelta(seconds=into_bucket)
    window = window_with(
        (dt.timedelta(0), True),
        (dt.timedelta(hours=12), False),
        (dt.timedelta(hours=23, minutes=45) - dt.timedelta(seconds=1), True),
        now=now,
    )
    assert window.summary(now) == HealthSummary(requests=3, succeeded=2, failed=1)


def test_the_window_slides_a_delivery_out_after_24h() -> None:
    window = HealthWindow()
    window.record(NOW + dt.timedelta(minutes=5), succeeded=True, status_code=200)
    assert window.summary(NOW + dt.timedelta(hours=23, minutes=59)).requests == 1
    # Out once its 15-minute bucket began 24h ago: the window never reaches further back than 24h.
    assert window.summary(NOW + dt.timedelta(hours=24)).requests == 0


def test_prune_drops_buckets_that_left_the_window_and_keeps_the_rest() -> None:
    window = window_with((dt.timedelta(hours=30), True), (dt.timedelta(hours=25), False), (dt.timedelta(hours=1), True))
    window.prune(NOW)
    assert sorted(window.buckets) == [int((NOW - dt.timedelta(hours=1)).timestamp())]
    assert window.summary(NOW) == HealthSummary(1, 1, 0)


def test_last_delivery_only_moves_forward() -> None:
    window = HealthWindow()
    window.record(NOW, succeeded=False, status_code=503)
    window.record(NOW - dt.timedelta(minutes=1), succeeded=True, status_code=200)  # finished earlier, reported later
    assert (window.last_delivery_time, window.last_status_code) == (NOW, 503)
    window.record(NOW + dt.timedelta(seconds=1), succeeded=False, status_code=None)  # no response: code stays
    assert (window.last_delivery_time, window.last_status_code) == (NOW + dt.timedelta(seconds=1), 503)


# -- status round trip ------------------------------------------------------------------
def test_to_status_reports_the_contract_fields() -> None:
    window = window_with(*[(dt.timedelta(minutes=m), True) for m in range(1, 512)], (dt.timedelta(0), False))
    status = window.to_status(NOW)
    assert {k: v for k, v in status.items() if k != "buckets"} == {
        "window": "24h",
        "requests": 512,
        "succeeded": 511,
        "failed": 1,
        "successRate": "99.80%",
        "state": "Healthy",
        "lastDeliveryTime": "2026-11-28T03:00:00Z",
        "lastStatusCode": 503,
    }


def test_empty_window_reports_unknown_and_a_dash() -> None:
    assert HealthWindow().to_status(NOW) == {
        "window": "24h",
        "requests": 0,
        "succeeded": 0,
        "failed": 0,
        "successRate": "-",
        "state": "Unknown",
        "buckets": [],
    }


def test_from_status_restores_what_to_status_wrote() -> None:
    window = window_with(
        (dt.timedelta(minutes=1), True), (dt.timedelta(hours=3), False), (dt.timedelta(hours=20), True)
    )
    status = window.to_status(NOW)
    restored = HealthWindow.from_status(status)
    assert restored.to_status(NOW) == status
    assert restored.summary(NOW) == window.summary(NOW)
    # It keeps counting where it left off.
    restored.record(NOW, succeeded=True, status_code=204)
    assert restored.to_status(NOW)["requests"] == 4
    assert restored.to_status(NOW)["lastStatusCode"] == 204


def test_status_size_stays_bounded_however_many_deliveries() -> None:
    window = HealthWindow()
    start = NOW - dt.timedelta(days=3)
    for minute in range(0, 3 * 24 * 60, 2):  # a delivery every two minutes for three days
        window.record(start + dt.timedelta(minutes=minute), succeeded=minute % 10 != 0, status_code=200)
    status = window.to_status(NOW)
    assert len(status["buckets"]) <= 24 * 4 + 2
    assert len(status["buckets"]) <= 200  # the CRD's maxItems
    assert all(BUCKET_ITEM.match(item) and len(item) <= 64 for item in status["buckets"])
    # In the window: the deliveries of the last 23h45m (712 of them), every fifth one failed.
    assert (status["requests"], status["succeeded"], status["failed"]) == (712, 570, 142)


@pytest.mark.parametrize(
    "junk",
    ["", "abc", "1:2", "1:2:3:4", "x:1:1", "1.5:1:1", None, 7, ["1", "2", "3"]],
    ids=["empty", "word", "two-parts", "four-parts", "non-numeric", "float", "null", "number", "list"],
)
def test_malformed_buckets_are_ignored_and_the_rest_kept(junk: Any) -> None:
    good = f"{int(NOW.timestamp()) - BUCKET_S}:5:1"
    window = HealthWindow.from_status({"buckets": [junk, good], "lastStatusCode": 200})
    assert window.summary(NOW) == HealthSummary(6, 5, 1)
    assert window.last_status_code == 200


def test_negative_counts_in_a_bucket_are_read_as_zero() -> None:
    window = HealthWindow.from_status({"buckets": [f"{int(NOW.timestamp())}:-3:2"]})
    assert window.summary(NOW) == HealthSummary(2, 0, 2)


@pytest.mark.parametrize(
    "health",
    [None, "24h", 5, [], {}, {"buckets": None}, {"buckets": "1:2:3"}, {"buckets": 5}, {"lastDeliveryTime": "soon"}],
)
def test_unreadable_health_status_starts_an_empty_window(health: Any) -> None:
    window = HealthWindow.from_status(health)
    assert window.summary(NOW).requests == 0
    assert window.last_delivery_time is None
