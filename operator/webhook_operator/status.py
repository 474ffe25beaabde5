"""Pure computation of status fragments: conditions and WebhookEvent phase and summary.

Conditions follow the conventions kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status, used by Flux)
reads: ``Reconciling=True`` is InProgress, ``Stalled=True`` is Failed, ``Ready=True`` is Current.
"""

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
    existing: Sequence[Mapping[str, Any]] | None,
    updates: Sequence[dict[str, Any]],
    *,
    remove: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``existing`` with ``updates`` replacing conditions of the same type, minus the types in ``remove``."""
    by_type = {str(c.get("type")): dict(c) for c in existing or ()}
    for update in updates:
        by_type[update["type"]] = update
    for type_ in remove:
        by_type.pop(type_, None)
    order = ["Ready", "Stalled", "Reconciling", "Healthy"]
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


def webhook_conditions(
    existing: Sequence[Mapping[str, Any]] | None,
    *,
    ready: tuple[str, str, str],
    generation: int | None,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """A Webhook's Ready condition, and ``Stalled=True`` beside ``Ready=False``.

    Ready=False always means the operator rejects the configuration (a user has to act), so kstatus
    should call it Failed at once instead of waiting for a timeout: that is what Stalled says.
    """
    status, reason, message = ready
    types = [("Ready", status), ("Stalled", "True")] if status == "False" else [("Ready", status)]
    updates = [
        condition(existing, type_=t, status=s, reason=reason, message=message, generation=generation, now=now)
        for t, s in types
    ]
    return merge_conditions(existing, updates, remove=() if status == "False" else ("Stalled",))


# WebhookEvent conditions by phase: (type, status) pairs, all with the phase as reason. Only what
# kstatus needs is written (no False twins), because the event status write is on the hot path.
_EVENT_CONDITIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "Pending": (("Reconciling", "True"),),
    "Delivering": (("Reconciling", "True"),),
    "Delivered": (("Ready", "True"),),
    "NoSubscribers": (("Ready", "True"),),
    "PartiallyFailed": (("Ready", "False"), ("Stalled", "True")),
    "Failed": (("Ready", "False"), ("Stalled", "True")),
}


def event_conditions(
    existing: Sequence[Mapping[str, Any]] | None,
    *,
    phase: str,
    delivered: str,
    generation: int | None,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """The WebhookEvent's conditions for ``phase``, replacing whatever conditions it had.

    Pending/Delivering: ``Reconciling=True`` (kstatus InProgress); Delivered/NoSubscribers:
    ``Ready=True`` (Current); Failed/PartiallyFailed: ``Ready=False`` and ``Stalled=True`` (Failed).
    """
    message = "no enabled, Ready webhook subscribes" if phase == "NoSubscribers" else f"{delivered} delivered"
    return [
        condition(existing, type_=type_, status=status, reason=phase, message=message, generation=generation, now=now)
        for type_, status in _EVENT_CONDITIONS.get(phase, ())
    ]
