"""Pure computation of status fragments: conditions and WebhookEvent phase and summary."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from webhook_operator.model import FINAL_OUTCOMES, format_time


def condition(
    existing: Iterable[Mapping[str, Any]] | None,
    *,
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: dt.datetime,
) -> dict[str, Any]:
    """A metav1.Condition; lastTransitionTime moves only when the status changes."""
    previous = next((c for c in existing or () if c.get("type") == type_), None)
    transition = (
        previous["lastTransitionTime"]
        if previous and previous.get("status") == status and previous.get("lastTransitionTime")
        else format_time(now)
    )
    result: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        result["observedGeneration"] = generation
    return result


def merge_conditions(
    existing: Sequence[Mapping[str, Any]] | None, updates: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    by_type = {str(c.get("type")): dict(c) for c in existing or ()}
    for update in updates:
        by_type[update["type"]] = update
    order = ["Ready", "Healthy"]
    return sorted(by_type.values(), key=lambda c: (order.index(c["type"]) if c["type"] in order else 99, c["type"]))


def event_phase(deliveries: Sequence[Mapping[str, Any]]) -> str:
    """Phase of a WebhookEvent from its delivery entries."""
    if not deliveries:
        return "NoSubscribers"
    outcomes = [d.get("outcome") for d in deliveries]
    if any(o not in FINAL_OUTCOMES for o in outcomes):
        return "Delivering" if any(int(d.get("attempts") or 0) > 0 for d in deliveries) else "Pending"
    succeeded = sum(1 for o in outcomes if o == "Succeeded")
    if succeeded == len(outcomes):
        return "Delivered"
    return "Failed" if succeeded == 0 else "PartiallyFailed"


def delivered_summary(deliveries: Sequence[Mapping[str, Any]]) -> str:
    """``succeeded/total`` for the DELIVERED printer column."""
    succeeded = sum(1 for d in deliveries if d.get("outcome") == "Succeeded")
    return f"{succeeded}/{len(deliveries)}"


def without_volatile(conditions: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Conditions minus lastTransitionTime, for deciding whether a status write is needed."""
    return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conditions or ()]
