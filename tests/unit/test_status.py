"""Status fragments computed without I/O: conditions, WebhookEvent phase and the DELIVERED summary."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from webhook_operator.status import (
    condition,
    delivered_summary,
    event_conditions,
    event_phase,
    merge_conditions,
    webhook_conditions,
    without_volatile,
)

NOW = dt.datetime(2026, 11, 28, 4, 30, 0, tzinfo=dt.UTC)


def ready(status: str, *, reason: str = "Reconciled", at: str = "2026-11-28T03:00:00Z") -> dict[str, Any]:
    return {"type": "Ready", "status": status, "reason": reason, "message": "m", "lastTransitionTime": at}


# -- conditions -------------------------------------------------------------------------
def test_a_new_condition_transitions_now_and_carries_the_generation() -> None:
    assert condition(None, type_="Ready", status="True", reason="Reconciled", message="ok", generation=3, now=NOW) == {
        "type": "Ready",
        "status": "True",
        "reason": "Reconciled",
        "message": "ok",
        "lastTransitionTime": "2026-11-28T04:30:00Z",
        "observedGeneration": 3,
    }


def test_transition_time_is_kept_while_the_status_stays_even_if_reason_and_message_change() -> None:
    updated = condition(
        [ready("False", reason="InsecureURL")],
        type_="Ready",
        status="False",
        reason="BlockedDestination",
        message="another problem",
        generation=2,
        now=NOW,
    )
    assert updated["lastTransitionTime"] == "2026-11-28T03:00:00Z"
    assert (updated["reason"], updated["message"], updated["observedGeneration"]) == (
        "BlockedDestination",
        "another problem",
        2,
    )


def test_transition_time_moves_when_the_status_changes() -> None:
    updated = condition([ready("False")], type_="Ready", status="True", reason="R", message="", generation=1, now=NOW)
    assert updated["lastTransitionTime"] == "2026-11-28T04:30:00Z"


def test_other_condition_types_do_not_lend_their_transition_time() -> None:
    healthy = {**ready("True"), "type": "Healthy"}
    updated = condition([healthy], type_="Ready", status="True", reason="R", message="", generation=1, now=NOW)
    assert updated["lastTransitionTime"] == "2026-11-28T04:30:00Z"


def test_a_previous_condition_without_transition_time_gets_one() -> None:
    previous = ready("True")
    del previous["lastTransitionTime"]
    updated = condition([previous], type_="Ready", status="True", reason="R", message="", generation=1, now=NOW)
    assert updated["lastTransitionTime"] == "2026-11-28T04:30:00Z"


def test_observed_generation_is_left_out_when_unknown() -> None:
    assert "observedGeneration" not in condition(
        None, type_="Ready", status="True", reason="R", message="", generation=None, now=NOW
    )


def test_merge_replaces_by_type_keeps_others_and_orders_ready_then_healthy() -> None:
    existing = [
        {"type": "Zeta", "status": "True"},
        {"type": "Healthy", "status": "Unknown"},
        {"type": "Alpha", "status": "True"},
    ]
    merged = merge_conditions(existing, [ready("True")])
    assert [c["type"] for c in merged] == ["Ready", "Healthy", "Alpha", "Zeta"]
    replaced = merge_conditions(merged, [{**ready("True"), "type": "Healthy", "status": "False"}])
    assert [c["status"] for c in replaced if c["type"] == "Healthy"] == ["False"]
    assert len(replaced) == 4


def test_merge_does_not_modify_its_inputs() -> None:
    existing = [ready("False")]
    merge_conditions(existing, [ready("True")])
    assert existing == [ready("False")]


def test_without_volatile_ignores_only_the_transition_time() -> None:
    assert without_volatile([ready("True", at="a")]) == without_volatile([ready("True", at="b")])
    assert without_volatile([ready("True")]) != without_volatile([ready("True", reason="Other")])
    assert without_volatile(None) == []


# -- event phase ------------------------------------------------------------------------
def entry(outcome: str, attempts: int = 1) -> dict[str, Any]:
    return {"webhook": "w", "outcome": outcome, "attempts": attempts}


@pytest.mark.parametrize(
    ("deliveries", "phase"),
    [
        ([], "NoSubscribers"),
        ([entry("Pending", 0)], "Pending"),
        ([entry("Pending", 0), entry("Pending", 0)], "Pending"),
        ([entry("Retrying", 1)], "Delivering"),
        ([entry("Pending", 0), entry("Succeeded", 1)], "Delivering"),  # one webhook answered, one still to go
        ([entry("Pending", 0), entry("Failed", 4)], "Delivering"),
        ([{"webhook": "w", "outcome": "Pending"}], "Pending"),  # attempts absent counts as none
        ([entry("Succeeded")], "Delivered"),
        ([entry("Succeeded"), entry("Succeeded", 3)], "Delivered"),
        ([entry("Failed", 4)], "Failed"),
        ([entry("Failed"), entry("Failed")], "Failed"),
        ([entry("Succeeded"), entry("Failed", 4)], "PartiallyFailed"),
        ([{"webhook": "w"}], "Pending"),  # an entry without outcome is not final
    ],
    ids=[
        "no-subscribers",
        "pending",
        "all-pending",
        "retrying",
        "one-done-one-pending",
        "one-failed-one-pending",
        "attempts-absent",
        "delivered",
        "all-delivered",
        "failed",
        "all-failed",
        "partially-failed",
        "outcome-absent",
    ],
)
def test_event_phase(deliveries: list[dict[str, Any]], phase: str) -> None:
    assert event_phase(deliveries) == phase


@pytest.mark.parametrize(
    ("deliveries", "summary"),
    [
        ([], "0/0"),
        ([entry("Succeeded")], "1/1"),
        ([entry("Succeeded"), entry("Failed"), entry("Retrying")], "1/3"),
        ([entry("Pending", 0), entry("Failed")], "0/2"),
    ],
)
def test_delivered_summary_counts_succeeded_of_all(deliveries: list[dict[str, Any]], summary: str) -> None:
    assert delivered_summary(deliveries) == summary


# -- what kstatus reads --------------------------------------------------------------------
def types_and_statuses(conditions: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["type"], c["status"]) for c in conditions]


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("Pending", [("Reconciling", "True")]),
        ("Delivering", [("Reconciling", "True")]),
        ("Delivered", [("Ready", "True")]),
        ("NoSubscribers", [("Ready", "True")]),
        ("PartiallyFailed", [("Ready", "False"), ("Stalled", "True")]),
        ("Failed", [("Ready", "False"), ("Stalled", "True")]),
    ],
)
def test_event_conditions_by_phase(phase: str, expected: list[tuple[str, str]]) -> None:
    conditions = event_conditions(None, phase=phase, delivered="1/2", generation=1, now=NOW)

    assert types_and_statuses(conditions) == expected
    for c in conditions:
        assert c["reason"] == phase and c["observedGeneration"] == 1
        assert c["lastTransitionTime"] == "2026-11-28T04:30:00Z" and c["message"]


def test_event_conditions_replace_the_delivering_ones_and_keep_unchanged_transition_times() -> None:
    delivering = event_conditions(None, phase="Delivering", delivered="0/1", generation=1, now=NOW)
    later = NOW + dt.timedelta(seconds=30)

    still = event_conditions(delivering, phase="Delivering", delivered="0/1", generation=1, now=later)
    done = event_conditions(delivering, phase="Failed", delivered="0/1", generation=1, now=later)

    assert still == delivering, "an unchanged phase must give identical conditions (no extra status write)"
    assert types_and_statuses(done) == [("Ready", "False"), ("Stalled", "True")]
    assert {c["lastTransitionTime"] for c in done} == {"2026-11-28T04:30:30Z"}
    assert done[0]["message"] == "0/1 delivered"


def test_a_rejected_webhook_is_stalled_beside_not_ready() -> None:
    conditions = webhook_conditions(None, ready=("False", "InvalidURL", "spec.url is not a URL"), generation=2, now=NOW)

    assert types_and_statuses(conditions) == [("Ready", "False"), ("Stalled", "True")]
    assert conditions[1]["reason"] == "InvalidURL" and conditions[1]["message"] == "spec.url is not a URL"
    assert conditions[1]["observedGeneration"] == 2


def test_a_fixed_webhook_is_no_longer_stalled_and_other_conditions_stay() -> None:
    healthy = {"type": "Healthy", "status": "True", "reason": "OK", "message": "m", "lastTransitionTime": "x"}
    stalled = [*webhook_conditions(None, ready=("False", "InvalidURL", "bad"), generation=1, now=NOW), healthy]

    fixed = webhook_conditions(stalled, ready=("True", "Reconciled", "ok"), generation=2, now=NOW)

    assert types_and_statuses(fixed) == [("Ready", "True"), ("Healthy", "True")]
