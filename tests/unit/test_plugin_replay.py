"""kubectl webhooks replay: which events of the window it picks, and how it counts progress."""

from __future__ import annotations

import datetime as dt
from typing import Any

from webhook_operator.plugin import build_parser, log_rows, replay_progress, replay_targets

SINCE = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def event(name: str, created: str, *entries: tuple[str, str], replayed: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"deliveries": [{"webhook": w, "outcome": o} for w, o in entries]}
    if replayed:
        status["replay"] = {"requestedAt": replayed}
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


EVENTS = [
    event("late", "2026-01-01T12:30:00Z", ("a", "Succeeded"), ("b", "Failed")),
    event("failed", "2026-01-01T12:10:00Z", ("a", "Failed")),
    event("old", "2026-01-01T11:59:59Z", ("a", "Failed")),
    event("busy", "2026-01-01T12:20:00Z", ("a", "Retrying")),
    event("other", "2026-01-01T12:20:00Z", ("b", "Succeeded")),
]


def test_targets_are_the_windows_final_deliveries_to_that_webhook_oldest_first() -> None:
    assert replay_targets(EVENTS, "a", SINCE, failed_only=False) == (["failed", "late"], 1)
    assert replay_targets(EVENTS, "a", SINCE, failed_only=True) == (["failed"], 1)
    assert replay_targets(EVENTS, "b", SINCE, failed_only=True) == (["late"], 0)
    assert replay_targets(EVENTS, "c", SINCE, failed_only=False) == ([], 0)


def test_progress_counts_only_answers_to_this_replay() -> None:
    value = "t2 a all"
    events = [
        event("done", "2026-01-01T12:30:00Z", ("a", "Succeeded"), replayed=value),
        event("bad", "2026-01-01T12:30:00Z", ("a", "Failed"), replayed=value),
        event("stale", "2026-01-01T12:30:00Z", ("a", "Succeeded"), replayed="t1 a all"),
        event("running", "2026-01-01T12:30:00Z", ("a", "Pending"), replayed=value),
    ]
    counts = replay_progress(events, "a", value, {"done", "bad", "stale", "running", "deleted"})
    assert counts == {"delivered": 1, "failed": 1, "pending": 2, "gone": 1}


def test_since_is_required() -> None:
    args = build_parser().parse_args(["replay", "hook", "--since", "2h", "--failed-only", "--wait"])
    assert (args.name, args.since, args.failed_only, args.wait) == ("hook", "2h", True, True)


def test_the_request_log_shows_the_rate_limit_wait() -> None:
    waited = {"webhook": "a", "outcome": "Succeeded", "lastAttemptTime": "2026-01-01T12:30:00Z", "rateLimitedMs": 2500}
    events = [
        {"metadata": {"name": "e", "creationTimestamp": "2026-01-01T12:30:00Z"}, "status": {"deliveries": [waited]}}
    ]
    assert log_rows(events, "a", SINCE, failed_only=False)[0][7] == "2.5s"
    waited.pop("rateLimitedMs")
    assert log_rows(events, "a", SINCE, failed_only=False)[0][7] == "-"
