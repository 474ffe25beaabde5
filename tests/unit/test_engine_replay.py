"""A replay request starts over only that webhook's delivery; the redeliver annotation is unchanged."""

from __future__ import annotations

from tests.unit.test_engine import FAILED, SUCCEEDED, engine, event_body  # noqa: F401 (engine is a fixture)
from webhook_operator.delivery.engine import DeliveryEngine
from webhook_operator.delivery.redelivery import parse_replay
from webhook_operator.model import REDELIVER_ANNOTATION, REPLAY_ANNOTATION


async def test_replay_all_starts_that_webhooks_succeeded_delivery_over_keeping_its_id(engine: DeliveryEngine) -> None:  # noqa: F811
    request = parse_replay("t1 good all")
    assert request is not None
    job = engine._job_from(event_body({"phase": "PartiallyFailed", "deliveries": [FAILED, SUCCEEDED]}), request=request)
    bad, good = job.deliveries
    assert bad == FAILED  # another webhook's failed delivery is left alone
    assert good == {"webhook": "good", "id": "msg_good", "outcome": "Pending", "attempts": 0}
    assert job.replay is not None and job.replay["requestedAt"] == "t1 good all"
    assert job.redelivery is None
    assert job.order == ("2026-11-28T03:00:00Z", "shop", "user-created-x7")


async def test_replay_failed_only_leaves_a_succeeded_delivery(engine: DeliveryEngine) -> None:  # noqa: F811
    request = parse_replay("t1 good failed")
    assert request is not None
    job = engine._job_from(event_body({"phase": "Delivered", "deliveries": [SUCCEEDED]}), request=request)
    assert job.deliveries == [SUCCEEDED]


async def test_a_final_event_with_a_replay_request_starts_and_an_answered_one_does_not(
    engine: DeliveryEngine,  # noqa: F811
) -> None:
    answered = {"phase": "Delivered", "deliveries": [SUCCEEDED], "replay": {"requestedAt": "t1 good all"}}
    await engine.on_event("MODIFIED", event_body(answered, {REPLAY_ANNOTATION: "t1 good all"}))
    assert engine.active_jobs == 0
    await engine.on_event("MODIFIED", event_body(answered, {REPLAY_ANNOTATION: "t2 good all"}))
    assert engine.active_jobs == 1


async def test_both_requests_answered_ones_are_remembered(engine: DeliveryEngine) -> None:  # noqa: F811
    status = {
        "phase": "Delivered",
        "deliveries": [SUCCEEDED],
        "redelivery": {"requestedAt": "r1"},
        "replay": {"requestedAt": "t1 good all"},
    }
    await engine.on_event(
        "MODIFIED", event_body(status, {REDELIVER_ANNOTATION: "r1", REPLAY_ANNOTATION: "t1 good all"})
    )
    assert engine.active_jobs == 0
