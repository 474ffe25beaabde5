"""Status fragments computed without I/O: conditions, WebhookEvent phase and the DELIVERED summary."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from webhook_operator.status import (
    condition,
    delivered_summary,
    event_phase,
    merge_conditions,
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
